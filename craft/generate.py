"""Text generation: sampling rules and a streaming decode loop for the GPT and the RNN.

    cfg = SamplingConfig.checked(temperature=0.8, top_k=40)
    for token in generate("gpt", params, model_cfg, prompt_ids, cfg):   # streams token ids
        ...
    text = generate_text("gpt", params, model_cfg, tokenizer, "Winter is", cfg, stream=sys.stdout)

The GPT decodes with its key/value cache: one `decode_step` for the prompt, then one per token.
When the cache is full it is refilled with the last half of the context (see `_Window`), so a
generation can run past `block_size`. `generate_recompute` runs the same policy with a full
`gpt.apply` per token: the baseline of `benchmarks/generate.py`, and what the cache must agree with.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from craft.data.tokenizers import Tokenizer
from craft.errors import ConfigError
from craft.models import gpt, rnn
from craft.tree import Params, leaves, tree_map

MODELS = ("gpt", "rnn")
Cache = list[dict[str, torch.Tensor]]
RNN_CONTEXT = 256
"""The RNN's default window: it has no block size, and recomputes over this many tokens."""


class SamplingConfig(BaseModel):
    """How the next token is drawn from the logits. temperature 0 means greedy (argmax)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    max_new_tokens: int = 200
    seed: int = 0

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if not value >= 0:  # written so that NaN fails too
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {value}")
        if math.isinf(value):
            raise ValueError("temperature must be finite, got inf")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"top_k must be >= 1, got {value}")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {value}")
        return value

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new_tokens(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {value}")
        return value

    @classmethod
    def checked(cls, **kwargs: object) -> SamplingConfig:
        """Build and validate; a bad value raises ConfigError with one readable line."""
        try:
            return cls.model_validate(kwargs)
        except ValidationError as error:
            raise ConfigError(_one_line(error)) from None


def _one_line(error: ValidationError) -> str:
    messages = []
    for item in error.errors():
        if item["type"] == "value_error":  # ours: the message already names the field
            messages.append(item["msg"].removeprefix("Value error, "))
        else:  # pydantic's own (wrong type, unknown field): say which field
            field = ".".join(str(part) for part in item["loc"])
            messages.append(f"{field}: {item['msg']}")
    return "; ".join(messages)


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator
) -> torch.Tensor:
    """Next token ids `[B]` (int64) for logits `[B, V]`.

    Temperature, then top-k, then top-p (nucleus), then a draw from what is left. Ties at the
    cut-off are kept together (as nanoGPT and Hugging Face do for top-k), so the kept set never
    depends on how a sort orders equal values. Dropped tokens get exactly zero probability.
    """
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if cfg.top_p < 1:
        probs = torch.softmax(scores, dim=-1)
        ordered = torch.sort(probs, dim=-1, descending=True).values
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ranked above
        # The smallest prefix whose mass reaches top_p: ranks whose mass above is still short of
        # it. Rank 0 always qualifies (0 < top_p), so the most likely token is always kept.
        last = (before < cfg.top_p).sum(dim=-1, keepdim=True) - 1
        floor = ordered.gather(-1, last)
        scores = scores.masked_fill(probs < floor, -math.inf)
    probs = torch.softmax(scores, dim=-1)  # exp(-inf) is exactly 0: masked tokens stay out
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: str,
    params: Params,
    model_cfg: gpt.GPTConfig | rnn.RNNConfig,
    prompt_ids: Sequence[int],
    cfg: SamplingConfig,
    *,
    compile: bool | str = False,
    device: torch.device | str = "cpu",
    context: int | None = None,
) -> Iterator[int]:
    """Yield `cfg.max_new_tokens` new token ids one at a time (batch 1).

    model: "gpt" (KV cache; `compile` compiles its one-token step: True, or a torch.compile
    mode such as "reduce-overhead", which replays it as a CUDA graph on a GPU) or "rnn"
    (recomputes over the last `context` tokens each step, default 256). `context` for a GPT
    defaults to, and may not exceed, its block_size. A longer prompt keeps its last `context`
    tokens, with a warning.
    """
    if model == "gpt":
        gpt_cfg = _gpt_config(model_cfg)
        window = _gpt_window(gpt_cfg, prompt_ids, context)
        params = _on(params, device)
        return _generate_cached(params, gpt_cfg, window, cfg, compile=compile, device=device)
    if model == "rnn":
        if not isinstance(model_cfg, rnn.RNNConfig):
            raise ConfigError(f"model 'rnn' needs an RNNConfig, got {type(model_cfg).__name__}")
        rnn_cfg = model_cfg
        length = RNN_CONTEXT if context is None else _positive_context(context)
        tokens = _prompt(prompt_ids, length, rnn_cfg.vocab_size, stacklevel=3)
        rnn_params = _on(params, device)
        return _generate_sliding(
            lambda x: rnn.apply(rnn_params, x, rnn_cfg), tokens, length, cfg, device=device
        )
    raise ConfigError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")


def generate_recompute(
    params: Params,
    model_cfg: gpt.GPTConfig,
    prompt_ids: Sequence[int],
    cfg: SamplingConfig,
    *,
    device: torch.device | str = "cpu",
    context: int | None = None,
) -> Iterator[int]:
    """GPT generation without a cache: a full `gpt.apply` over the context for every token.

    It keeps the same context policy as the cached path (refill with the last half when full),
    rather than a sliding window, so both see the same tokens at every step and greedy decoding
    must give the same ids: a test holds the cache to that. Used as the benchmark's baseline.
    """
    gpt_cfg = _gpt_config(model_cfg)
    window = _gpt_window(gpt_cfg, prompt_ids, context)  # checked now, not at the first next()
    return _generate_recomputed(_on(params, device), gpt_cfg, window, cfg, device=device)


def generate_text(
    model: str,
    params: Params,
    model_cfg: gpt.GPTConfig | rnn.RNNConfig,
    tokenizer: Tokenizer,
    prompt: str,
    cfg: SamplingConfig,
    *,
    stream: TextSink | None = None,
    compile: bool = False,
    device: torch.device | str = "cpu",
    context: int | None = None,
) -> str:
    """The continuation of `prompt` (without the prompt), written to `stream` as it arrives.

    Each step decodes the whole continuation and writes what is new. A trailing U+FFFD is held
    back until the next token: with byte-fallback pieces it may be half of a character that the
    next piece completes, and text already written cannot be taken back.
    """
    prompt_ids = tokenizer.encode(prompt).tolist()  # DataError names characters it lacks
    new: list[int] = []
    written = ""
    for token in generate(
        model, params, model_cfg, prompt_ids, cfg, compile=compile, device=device, context=context
    ):
        new.append(token)
        if stream is not None:
            text = tokenizer.decode(new)
            written += _write(stream, written, text.rstrip("\ufffd"))
    text = tokenizer.decode(new)
    if stream is not None:
        _write(stream, written, text)
    return text


class TextSink(Protocol):
    """Where streamed text goes: sys.stdout, an open text file, io.StringIO."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


def _write(stream: TextSink, written: str, text: str) -> str:
    """Write the part of `text` past `written`; return what was written."""
    if len(text) <= len(written) or not text.startswith(written):
        return ""
    suffix = text[len(written) :]
    stream.write(suffix)
    stream.flush()
    return suffix


class _Window:
    """The tokens the model conditions on, and the policy for when they fill the context.

    Full at `limit` tokens, the window restarts from its last `limit // 2`: a cache refill costs
    one prefill per `limit // 2` tokens, where a sliding window would need a full recompute
    for every token (learned positions are absolute, so a cache cannot simply slide).
    """

    def __init__(self, tokens: list[int], limit: int):
        self.tokens, self.limit = tokens, limit

    def push(self, token: int) -> bool:
        """Append `token`; True when the window was full and restarted (the cache is stale)."""
        if len(self.tokens) < self.limit:
            self.tokens.append(token)
            return False
        self.tokens = [*self.tokens, token][-max(1, self.limit // 2) :]
        return True


def _generate_cached(
    params: Params,
    cfg: gpt.GPTConfig,
    window: _Window,
    sampling: SamplingConfig,
    *,
    compile: bool | str,
    device: torch.device | str,
) -> Iterator[int]:
    dtype = params["tok"]["embedding"].dtype
    # Only as long as this generation can fill: a rotary model's block_size shapes no param,
    # so a checkpoint's record could claim any length (1e9 would ask for hundreds of GB).
    length = min(window.limit, len(window.tokens) + sampling.max_new_tokens)
    cache = gpt.init_cache(cfg, 1, max_len=length, dtype=dtype, device=device)

    def one_token(params: Params, cache: Cache, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return gpt.decode_step(params, cache, x, pos, cfg)

    def one_token_eager(
        params: Params, cache: Cache, x: torch.Tensor, pos: torch.Tensor
    ) -> torch.Tensor:
        # Eagerly, attention may read only the filled slots: shapes need not stay static.
        return gpt.decode_step(params, cache, x, pos, cfg, filled=len(window.tokens))

    # Only the one-token step is compiled: its shapes never change, and `pos` is a tensor, so it
    # compiles once. The prompt prefill (a new length each time) runs eagerly.
    mode = compile if isinstance(compile, str) else None
    if mode in ("reduce-overhead", "max-autotune"):
        # CUDA graphs: the cache and params keep their addresses (the cache is written in
        # place), so a replay reads them where they are instead of copying them in.
        for tensor in [*leaves(params), *leaves(cache)]:
            torch._dynamo.mark_static_address(tensor)
    step = torch.compile(one_token, dynamic=False, mode=mode) if compile else one_token_eager
    generator = _generator(sampling, device)

    def prefill() -> torch.Tensor:
        # Refill the same buffers, so the compiled step keeps seeing the same tensors. Zeroing
        # is tidiness only: positions past the window are masked out anyway.
        for layer in cache:
            layer["k"].zero_()
            layer["v"].zero_()
        x = torch.tensor([window.tokens], dtype=torch.int64, device=device)
        return _logits(one_token_eager, params, cache, x, _position(0, device))

    logits = prefill()
    for index in range(sampling.max_new_tokens):
        token = int(sample_next(logits, sampling, generator).item())
        yield token
        if index + 1 == sampling.max_new_tokens:
            break  # no logits needed after the last token
        if window.push(token):
            logits = prefill()
        else:
            x = torch.tensor([[token]], dtype=torch.int64, device=device)
            pos = _position(len(window.tokens) - 1, device)
            logits = _logits(step, params, cache, x, pos)


def _generate_recomputed(
    params: Params,
    cfg: gpt.GPTConfig,
    window: _Window,
    sampling: SamplingConfig,
    *,
    device: torch.device | str,
) -> Iterator[int]:
    generator = _generator(sampling, device)
    for index in range(sampling.max_new_tokens):
        x = torch.tensor([window.tokens], dtype=torch.int64, device=device)
        token = int(sample_next(_logits(gpt.apply, params, x, cfg), sampling, generator).item())
        yield token
        if index + 1 < sampling.max_new_tokens:
            window.push(token)


def _generate_sliding(
    apply: Callable[[torch.Tensor], torch.Tensor],
    tokens: list[int],
    context: int,
    sampling: SamplingConfig,
    *,
    device: torch.device | str,
) -> Iterator[int]:
    """Each token from a fresh pass over the last `context` tokens. The RNN trains from a zero
    state on windows of its sequence length, so a bounded window from zero is what it knows."""
    generator = _generator(sampling, device)
    for _ in range(sampling.max_new_tokens):
        x = torch.tensor([tokens[-context:]], dtype=torch.int64, device=device)
        token = int(sample_next(_logits(apply, x), sampling, generator).item())
        yield token
        tokens.append(token)


@torch.no_grad()
def _logits(fn: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    """The last position's logits `[1, V]`; no autograd graph, whatever the params require."""
    return fn(*args)[:, -1]


def _prompt(
    prompt_ids: Sequence[int], context: int, vocab_size: int | None, *, stacklevel: int
) -> list[int]:
    """The prompt as ints, checked, cropped to the context; `stacklevel` finds the caller."""
    tokens = [int(t) for t in prompt_ids]
    if not tokens:
        raise ConfigError("the prompt is empty")
    if vocab_size is not None and not all(0 <= t < vocab_size for t in tokens):
        bad = next(t for t in tokens if not 0 <= t < vocab_size)
        raise ConfigError(f"prompt token id {bad} is outside the model's vocabulary ({vocab_size})")
    if len(tokens) > context:
        warnings.warn(
            f"prompt of {len(tokens)} tokens is longer than the context ({context}); "
            f"keeping the last {context}",
            stacklevel=stacklevel,
        )
        tokens = tokens[-context:]
    return tokens


def _gpt_config(model_cfg: gpt.GPTConfig | rnn.RNNConfig) -> gpt.GPTConfig:
    if not isinstance(model_cfg, gpt.GPTConfig):
        raise ConfigError(f"model 'gpt' needs a GPTConfig, got {type(model_cfg).__name__}")
    return model_cfg


def _gpt_window(cfg: gpt.GPTConfig, prompt_ids: Sequence[int], context: int | None) -> _Window:
    limit = _gpt_context(cfg, context)
    return _Window(_prompt(prompt_ids, limit, cfg.vocab_size, stacklevel=4), limit)


def _gpt_context(cfg: gpt.GPTConfig, context: int | None) -> int:
    if context is None:
        return cfg.block_size
    if _positive_context(context) > cfg.block_size:
        raise ConfigError(f"context {context} exceeds the model's block_size {cfg.block_size}")
    return context


def _positive_context(context: int) -> int:
    if context < 1:
        raise ConfigError(f"context must be >= 1, got {context}")
    return context


def _generator(cfg: SamplingConfig, device: torch.device | str) -> torch.Generator:
    # On the logits' device: multinomial needs its generator there.
    return torch.Generator(device=device).manual_seed(cfg.seed)


def _position(value: int, device: torch.device | str) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64, device=device)


def _on(params: Params, device: torch.device | str) -> Params:
    return tree_map(lambda leaf: leaf.to(device), params)
