"""fastpath/token_nll.py: the fused token NLL equals autograd's `logsumexp - gather`, loss and gradient."""
import pytest
import torch

from easyedit_split.fastpath.token_nll import TokenNLL, token_nll


def _reference(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _logits(rows: int = 7, vocab: int = 301, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, dtype=dtype) * 4
    logits[0, 5] = 60.0          # one dominant logit (softmax near one-hot)
    logits[1] += 500.0           # a large shift: the maximum subtraction matters
    tokens = torch.randint(0, vocab, (rows,), generator=generator)
    tokens[0] = 5
    return logits, tokens


def test_loss_is_bit_identical_to_logsumexp_minus_gather():
    logits, tokens = _logits()
    expected = _reference(logits, tokens)
    assert torch.equal(TokenNLL.apply(logits.clone().requires_grad_(), tokens).detach(), expected)
    with torch.no_grad():
        assert torch.equal(token_nll(logits.clone(), tokens), expected)
    # and it is the negative log-softmax (independent formula) to float rounding
    torch.testing.assert_close(expected, -torch.log_softmax(logits.double(), -1).gather(
        -1, tokens.unsqueeze(-1)).squeeze(-1).float(), rtol=1e-6, atol=1e-5)


def test_gradient_is_softmax_minus_onehot_times_upstream():
    logits, tokens = _logits(dtype=torch.float64)
    upstream = torch.linspace(-1.5, 2.0, logits.shape[0], dtype=torch.float64)
    ours = logits.clone().requires_grad_()
    (TokenNLL.apply(ours, tokens) * upstream).sum().backward()
    theirs = logits.clone().requires_grad_()
    (_reference(theirs, tokens) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=1e-12)
    # by hand: row r's gradient is upstream[r] * (softmax(row) - onehot(token))
    by_hand = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(tokens, logits.shape[1])) * upstream[:, None]
    torch.testing.assert_close(ours.grad, by_hand, rtol=0, atol=1e-12)


def test_float32_gradient_agrees_with_autograd_through_a_linear_head():
    generator = torch.Generator().manual_seed(3)
    head = torch.randn(513, 32, generator=generator) * 0.5
    hidden = torch.randn(9, 32, generator=generator)
    tokens = torch.randint(0, 513, (9,), generator=generator)
    ours, theirs = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    loss_ours = TokenNLL.apply(ours @ head.T, tokens).sum()
    loss_theirs = _reference(theirs @ head.T, tokens).sum()
    loss_ours.backward()
    loss_theirs.backward()
    assert torch.equal(loss_ours, loss_theirs)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_no_grad_path_overwrites_the_callers_logits_and_keeps_nothing():
    logits, tokens = _logits()
    work = logits.clone()
    with torch.no_grad():
        got = token_nll(work, tokens)
    assert torch.equal(got, _reference(logits, tokens))
    assert not torch.equal(work, logits)   # documented: the logits are the work space
    assert not got.requires_grad


def test_logits_that_need_no_gradient_take_the_in_place_path_even_with_grad_enabled():
    logits, tokens = _logits()
    got = token_nll(logits.clone(), tokens)
    assert got.grad_fn is None and torch.equal(got, _reference(logits, tokens))


def test_a_second_backward_through_the_same_graph_raises_instead_of_reading_the_overwritten_softmax():
    logits, tokens = _logits()
    leaf = logits.clone().requires_grad_()
    loss = TokenNLL.apply(leaf, tokens).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_infinite_logits_behave_as_logsumexp():
    logits = torch.tensor([[0.0, float("-inf"), 1.0], [float("-inf"), float("-inf"), 2.0]])
    tokens = torch.tensor([2, 2])
    with torch.no_grad():
        assert torch.equal(token_nll(logits.clone(), tokens), _reference(logits, tokens))
