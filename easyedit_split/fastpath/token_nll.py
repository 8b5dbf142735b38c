"""Token NLLs from the LM head at chosen positions: `-log p(token) = logsumexp(logits) - logits[token]`.

Why a module of its own: at a vocabulary of 49,152 (the default model) the logits of a training
step's completion tokens are the largest tensors it makes, and autograd's own graph for
`logsumexp(x) - x.gather(t)` walks them about nine times (the exponentials again in the backward,
a zeros tensor and a scatter for the gather, a sum of the two gradients), allocating several of
them. `TokenNLL` walks them five times in all: its forward keeps the softmax it has to compute
anyway, and its backward turns that tensor into the gradient in place, `(softmax - onehot) * g`.
Without gradients the logits themselves are used as the work space.

The loss is the same number `torch.logsumexp(x) - x.gather(t)` gives, bit for bit (the same
operations in the same order: the maximum, masked where infinite, `exp(x - max)` summed, its log
plus the maximum); the gradient agrees with autograd's to float rounding
(tests/test_token_nll.py). The saved softmax is overwritten by the backward, so the graph can be
walked once (`retain_graph=True` and a second backward raise, they never read a stale tensor).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models import hidden_to_logits

__all__ = ["TokenNLL", "token_nll", "completion_token_nll"]


def _shift_and_sum(shifted: torch.Tensor, maxes: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`exp(shifted)` in place, and `log(sum) + max - target`; `shifted` holds `logits - max` on entry."""
    sums = shifted.exp_().sum(-1)
    return sums.log().add_(maxes.squeeze(-1)).sub_(target), sums


def _maxes(logits: torch.Tensor) -> torch.Tensor:
    # as torch.logsumexp: an infinite maximum is replaced by 0 before it is subtracted
    maxes = logits.amax(-1, keepdim=True)
    return maxes.masked_fill_(maxes.abs() == float("inf"), 0)


class TokenNLL(torch.autograd.Function):
    """`logsumexp(logits, -1) - logits.gather(-1, tokens)` with the backward `(softmax - onehot) * g`."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        target = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        maxes = _maxes(logits)
        exponentials = torch.sub(logits, maxes)
        nll, sums = _shift_and_sum(exponentials, maxes, target)
        ctx.save_for_backward(exponentials.div_(sums.unsqueeze(-1)), tokens)  # the softmax
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        probs, tokens = ctx.saved_tensors
        probs.mul_(grad.unsqueeze(-1))
        probs.scatter_add_(-1, tokens.unsqueeze(-1), -grad.unsqueeze(-1))
        return probs, None


def token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`-log softmax(logits)[token]` per row of `logits` `[N, vocab]` (float).

    With gradients, `TokenNLL`; without, the logits are overwritten (the caller's own tensor: do not
    read it afterwards) and nothing is kept.
    """
    if torch.is_grad_enabled() and logits.requires_grad:
        return TokenNLL.apply(logits, tokens)
    with torch.no_grad():
        target = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        maxes = _maxes(logits)
        return _shift_and_sum(logits.sub_(maxes), maxes, target)[0]


def completion_token_nll(model: nn.Module, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                         tokens: torch.Tensor, slice_size: int = 1024) -> torch.Tensor:
    """-log p(token | hidden at (row, position)), LM head at those positions only, in slices
    (differentiable: training's losses are built from it)."""
    out = []
    for start in range(0, rows.shape[0], slice_size):
        sl = slice(start, start + slice_size)
        logits = hidden_to_logits(model, hidden[rows[sl], positions[sl]]).float()
        out.append(token_nll(logits, tokens[sl]))
    return torch.cat(out)
