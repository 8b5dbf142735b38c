"""Judge backends: an OpenAI-compatible chat-completions endpoint, or a local Hugging Face chat model.

Both answer one rendered rubric prompt with the judge's text; parsing and caching live elsewhere
(`parsing.py`, `cache.py`, `rating.py`). The HTTP backend uses only the standard library (urllib in
a thread pool), so no HTTP client is required; the `openai` package is not needed either.

Environment (options given to the constructor win):

* base URL: ``EASYEDIT_SPLIT_JUDGE_BASE_URL``, then ``OPENAI_BASE_URL``, then EasyEdit's ``BASE_URL``,
  then ``https://api.openai.com/v1``;
* API key: ``EASYEDIT_SPLIT_JUDGE_API_KEY``, then ``OPENAI_API_KEY``, then EasyEdit's ``API_KEY``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from ..errors import EasyEditSplitError
from .prefix_reuse import PrefixKV
from .rubrics import RATING_MAX

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_VARIABLES = ("EASYEDIT_SPLIT_JUDGE_BASE_URL", "OPENAI_BASE_URL", "BASE_URL")
API_KEY_VARIABLES = ("EASYEDIT_SPLIT_JUDGE_API_KEY", "OPENAI_API_KEY", "API_KEY")


class JudgeRequestError(EasyEditSplitError, RuntimeError):
    """A judge request failed after its retries (the rating is recorded as missing)."""


class JudgeConfigError(EasyEditSplitError, ValueError):
    """The judge cannot work at all (no key, wrong URL or model, authentication refused): stop the run."""


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that answers a judge prompt with text.

    `model_id` names the judge in cache keys and results. `deterministic` backends (greedy local models)
    give the same answer when asked again, so an unparseable answer is not re-asked.
    """

    model_id: str
    deterministic: bool

    async def rate(self, prompt: str) -> str:
        ...


@runtime_checkable
class BatchJudgeBackend(JudgeBackend, Protocol):
    """A backend that is faster answering several prompts at once (a local model: one padded batch)."""

    batch_size: int

    async def rate_batch(self, prompts: Sequence[str]) -> list[str]:
        ...


def _from_env(names: Sequence[str]) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAICompatibleJudge:
    """``POST {base_url}/chat/completions`` with temperature 0, retried with exponential backoff.

    Retried: HTTP 429 (honouring ``Retry-After``, capped at `max_backoff`), 5xx, timeouts, refused or
    reset connections and malformed response bodies; `max_retries` retries after the first try, waiting
    ``backoff * 2**k`` seconds (plus up to 10% jitter). 401/403/404 raise `JudgeConfigError` at once;
    other errors raise `JudgeRequestError` once the retries are spent. At most `concurrency` requests
    are in flight; `timeout` bounds each socket operation of one request, in seconds.
    """

    deterministic = False

    def __init__(
        self,
        model: str,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_tokens: Optional[int] = 512,
        temperature: float = 0.0,
    ):
        if not model:
            raise JudgeConfigError("judge model: empty name (use openai:MODEL)")
        if concurrency < 1:
            raise JudgeConfigError(f"judge concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_url = (base_url or _from_env(BASE_URL_VARIABLES) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else _from_env(API_KEY_VARIABLES)
        if self.api_key is None and self.base_url == DEFAULT_BASE_URL:
            raise JudgeConfigError(f"no API key for {DEFAULT_BASE_URL}: set one of {', '.join(API_KEY_VARIABLES)} "
                                   "or pass api_key (or point base_url at a local server)")
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.model_id = f"openai:{model}"
        self._semaphore: Optional[asyncio.Semaphore] = None
        self._semaphore_loop: Optional[asyncio.AbstractEventLoop] = None
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge")

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore, self._semaphore_loop = asyncio.Semaphore(self.concurrency), loop
        return self._semaphore

    def _payload(self, prompt: str) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                                "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return json.dumps(body).encode("utf-8")

    def _post(self, payload: bytes) -> str:
        """One blocking request; returns the answer text or raises (_Retryable / Config / Request)."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            if error.code == 429 or error.code >= 500 or error.code == 408:
                retry_after = error.headers.get("Retry-After") if error.headers else None
                try:
                    seconds = float(retry_after) if retry_after is not None else None
                except ValueError:
                    seconds = None
                raise _RetryableError(f"HTTP {error.code}: {detail}", seconds) from error
            if error.code in (401, 403, 404):
                raise JudgeConfigError(f"{self.endpoint} (model '{self.model}'): HTTP {error.code}: {detail}") from error
            raise JudgeRequestError(f"{self.endpoint}: HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as error:
            raise _RetryableError(f"{type(error).__name__}: {error}") from error
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise _RetryableError(f"malformed response body: {raw[:200]!r}") from error

    async def rate(self, prompt: str) -> str:
        payload = self._payload(prompt)
        loop = asyncio.get_running_loop()
        last_error = "no attempt"
        for attempt in range(self.max_retries + 1):
            async with self._limit():
                try:
                    return await loop.run_in_executor(self._executor, self._post, payload)
                except _RetryableError as error:
                    last_error = str(error)
                    wait = self.backoff * (2 ** attempt)
                    if error.retry_after is not None:
                        wait = max(wait, error.retry_after)
                    wait = min(wait, self.max_backoff) * (1.0 + 0.1 * random.random())
            if attempt < self.max_retries:
                logger.info("judge request failed (%s); retry %d/%d in %.2fs",
                            last_error, attempt + 1, self.max_retries, wait)
                await asyncio.sleep(wait)
        raise JudgeRequestError(f"{self.endpoint}: gave up after {self.max_retries + 1} tries: {last_error}")

    def close(self, wait: bool = True) -> None:
        """Stop the request threads (`wait`: until a request already sent has returned)."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


FORCED_MARK = "(forced choice)"
"""Appended to a LocalJudge answer whose rating was forced with ``force_rating="argmax"``."""
EXPECTED_MARK = "(expected over digits)"
"""Appended to a LocalJudge answer whose rating was forced with ``force_rating="expected"``."""
FORCE_MODES = ("off", "argmax", "expected")


class LocalJudge:
    """A Hugging Face chat model as judge: chat template, greedy decoding, batches of `batch_size`.

    Pass `model` and `tokenizer`, or `model_name_or_path` (loaded with the package's loader, so the
    default model works offline). Generation runs in a worker thread, one batch at a time.

    Small models rarely end with a well-formed ``Rating: N`` line. With `force_rating`, an answer
    without a valid rating is continued with ``"\\nRating: "`` and the judge's next-token distribution
    over ``0``, ``1``, ``2`` is read: ``"argmax"`` takes the likeliest digit (``Rating: N (forced
    choice)``), ``"expected"`` the probability-weighted mean ``sum_d p(d) * d`` renormalised over the
    three digits (``Rating: 0.734 (expected over digits)``), a graded score that a small judge's argmax
    flattens to one digit. The marks let reports tell forced ratings from written ones; ``"off"``
    leaves such answers unparsed (missing). ``max_new_tokens=0`` (forcing only) skips the
    justification: one forward pass per question.

    `reuse_prefix` (default on): when forcing, the token prefix the questions share (chat header and
    rubric text) is run once and its keys and values reused (`prefix_reuse`); off runs every question
    whole. Both give the same digit probabilities up to float rounding.
    """

    deterministic = True

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        model_name_or_path: Optional[str] = None,
        max_new_tokens: int = 128,
        batch_size: int = 4,
        force_rating: str = "off",
        model_id: Optional[str] = None,
        reuse_prefix: bool = True,
    ):
        if force_rating not in FORCE_MODES:
            raise JudgeConfigError(f"LocalJudge: force_rating must be one of {FORCE_MODES}, got {force_rating!r}")
        if max_new_tokens == 0 and force_rating == "off":
            raise JudgeConfigError("LocalJudge: max_new_tokens=0 needs force_rating='argmax' or 'expected'")
        if model is None or tokenizer is None:
            if model_name_or_path is None:
                raise JudgeConfigError("LocalJudge needs model and tokenizer, or model_name_or_path")
            from ..models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(model_name_or_path)
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.force_rating = force_rating
        self.reuse_prefix = bool(reuse_prefix)
        self.prefixes = PrefixKV()
        name = model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
        self.model_id = model_id or (f"local:{name}" + ("" if force_rating == "off" else f":forced-{force_rating}"))
        self._lock: Optional[asyncio.Lock] = None

    def _encode(self, prompt: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer(prompt)["input_ids"])

    def _digit_ids(self) -> list[int]:
        ids = [self.tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(RATING_MAX + 1)]
        if any(len(one) != 1 for one in ids):
            raise JudgeConfigError(f"{self.model_id}: the digits 0..{RATING_MAX} are not single tokens; "
                                   "use force_rating=False")
        return [one[0] for one in ids]

    def _pad_id(self) -> int:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        return pad_id

    def _left_padded(self, contexts: Sequence[Sequence[int]], device: Any) -> tuple[Any, Any, Any]:
        """Input ids, attention mask and per-row positions of one left-padded batch."""
        import torch

        width = max(len(ids) for ids in contexts)
        pad_id = self._pad_id()
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in contexts])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts])
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        return input_ids.to(device), attention.to(device), position_ids.to(device)

    def _last_logits(self, contexts: Sequence[Sequence[int]]) -> Any:
        """Next-token logits after each context, ``[len(contexts), vocab]``.

        Why: the judge reads 11 logits at one position. The body runs on batches of `batch_size` rows
        and the LM head (a 49,152-row matrix for the default model) only on each row's last hidden
        state. With `reuse_prefix`, a prefix the rows share (the chat header and rubric text) runs once
        and only each row's suffix runs on its keys and values (`prefix_reuse`). Models without a
        separable body (no ``get_decoder``) fall back to the full forward's last position.
        """
        import torch

        device = next(self.model.parameters()).device
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        body = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        step = max(1, int(self.batch_size))
        if head is None or body is None or body is self.model:
            parts = []
            for start in range(0, len(contexts), step):
                input_ids, attention, position_ids = self._left_padded(contexts[start:start + step], device)
                with torch.no_grad():
                    parts.append(self.model(input_ids=input_ids, attention_mask=attention,
                                            position_ids=position_ids).logits[:, -1])
            return torch.cat(parts)
        groups, plain = [], list(range(len(contexts)))
        argument = self.prefixes.usable(self.model, body, contexts) if self.reuse_prefix else None
        if argument is not None:
            groups, plain = self.prefixes.plan(body, argument, contexts, device)
        hidden: list[Any] = [None] * len(contexts)
        for group in groups:
            for start in range(0, len(group.rows), step):
                chunk = group.rows[start:start + step]
                states = self.prefixes.last_hidden(body, argument, group, [contexts[i] for i in chunk],
                                                   self._pad_id(), device)
                for index, state in zip(chunk, states):
                    hidden[index] = state
        for start in range(0, len(plain), step):
            chunk = plain[start:start + step]
            input_ids, attention, position_ids = self._left_padded([contexts[i] for i in chunk], device)
            with torch.no_grad():
                states = body(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                              use_cache=False).last_hidden_state[:, -1]
            for index, state in zip(chunk, states):
                hidden[index] = state
        from ..models import head_logits

        with torch.no_grad():
            return head_logits(self.model, head, torch.stack(hidden))

    def digit_probabilities(self, contexts: Sequence[Sequence[int]]) -> Any:
        """``[len(contexts), RATING_MAX + 1]``: p(digit) after each ``context + "\nRating: "``, renormalised
        over the digits (what the forced ratings are read from)."""
        import torch

        suffix = self.tokenizer("\nRating: ", add_special_tokens=False)["input_ids"]
        rows = [list(context) + suffix for context in contexts]
        logits = self._last_logits(rows).float()[:, self._digit_ids()]
        return torch.softmax(logits, dim=-1)

    def _rating_text(self, probabilities: Any) -> str:
        import torch

        if self.force_rating == "argmax":
            return f"{int(torch.argmax(probabilities).item())} {FORCED_MARK}"
        expected = float((probabilities * torch.arange(len(probabilities), dtype=torch.float32)).sum())
        return f"{expected:.3f} {EXPECTED_MARK}"

    def forced_ratings(self, contexts: Sequence[Sequence[int]]) -> list[str]:
        """The rating texts read from the digit tokens after each ``context + "\nRating: "``.

        Batches of `batch_size` rows; a shared prefix runs once with `reuse_prefix` (`_last_logits`).
        """
        if not contexts:
            return []
        return [self._rating_text(row) for row in self.digit_probabilities(contexts)]

    def forced_rating(self, context: Sequence[int]) -> str:
        """The rating text read from the digit tokens after ``context + "\nRating: "`` (one forward pass)."""
        return self.forced_ratings([context])[0]

    def generate_batch(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers to `prompts` (blocking), left-padded so every row ends at its prompt."""
        import torch

        from .parsing import parse_rating

        encoded = [self._encode(prompt) for prompt in prompts]
        width = max(len(ids) for ids in encoded)
        pad_id = self._pad_id()
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        device = next(self.model.parameters()).device
        if self.max_new_tokens == 0:  # rating only: no justification, the forced digit right after the prompt
            output = input_ids
        else:
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                    max_new_tokens=self.max_new_tokens, pad_token_id=pad_id,
                    temperature=None, top_p=None, top_k=None,
                )
        stop = {pad_id, self.tokenizer.eos_token_id}
        answers = []
        to_force: list[tuple[int, list[int]]] = []
        for ids, row in zip(encoded, output.cpu().tolist()):
            generated = row[width:]
            while generated and generated[-1] in stop:
                generated.pop()
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if self.force_rating != "off" and parse_rating(text) is None:
                to_force.append((len(answers), ids + generated))
            answers.append(text)
        if to_force:
            forced = self.forced_ratings([context for _, context in to_force])
            for (index, _), rating in zip(to_force, forced):
                answers[index] = f"{answers[index]}\nRating: {rating}"
        return answers

    async def rate_batch(self, prompts: Sequence[str]) -> list[str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await asyncio.to_thread(self.generate_batch, list(prompts))

    async def rate(self, prompt: str) -> str:
        return (await self.rate_batch([prompt]))[0]


def make_judge(spec: str, **options: Any) -> JudgeBackend:
    """``openai:MODEL`` -> OpenAICompatibleJudge; ``local:MODEL_OR_PATH`` -> LocalJudge (the CLI's ``--judge``)."""
    kind, _, name = spec.partition(":")
    if kind == "openai" and name:
        return OpenAICompatibleJudge(name, **options)
    if kind == "local" and name:
        return LocalJudge(model_name_or_path=name, **options)
    raise JudgeConfigError(f"--judge '{spec}': expected openai:MODEL or local:MODEL_OR_PATH")
