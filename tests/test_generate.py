"""Generation: sampling invariants, config messages, KV cache against recomputation, streaming."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from craft import tree
from craft.data.tokenizers import CharTokenizer
from craft.errors import ConfigError, DataError
from craft.generate import (
    SamplingConfig,
    generate,
    generate_recompute,
    generate_text,
    sample_next,
)
from craft.models import gpt, rnn

GREEDY = SamplingConfig(temperature=0, max_new_tokens=40)


def small_gpt(positions: str = "learned", vocab: int = 61) -> tuple[gpt.GPTConfig, dict]:
    """A random GPT whose greedy output varies: untied head and weights scaled 10x, so logits
    are far from uniform and depend on the context (a fresh init repeats one token)."""
    cfg = gpt.GPTConfig(
        vocab_size=vocab, block_size=16, n_layer=2, n_head=4, n_embd=32,
        positions=positions, tie_embeddings=False,
    )  # fmt: skip
    params = gpt.init(cfg, seed=1)
    return cfg, tree.tree_map(lambda p: p * 10 if p.ndim >= 2 else p, params)


# --- sample_next -------------------------------------------------------------------------------

LOGIT = st.one_of(
    st.sampled_from([-math.inf, -2.0, 0.0, 1.0, 3.0]),  # few values: many ties and -inf
    st.floats(-8, 8, allow_nan=False),
)


@st.composite
def logit_rows(draw: st.DrawFn) -> list[float]:
    size = draw(st.integers(2, 10))
    row = draw(st.lists(LOGIT, min_size=size, max_size=size))
    if all(math.isinf(x) for x in row):  # a row needs one finite logit to be a distribution
        row[draw(st.integers(0, size - 1))] = draw(st.floats(-8, 8))
    return row


def allowed_tokens(
    scores: Sequence[float], top_k: int | None, top_p: float, slack: float
) -> dict[int, float]:
    """The tokens sampling may emit, with their renormalized probability, computed directly from
    the definitions: top-k keeps every token at least as large as the k-th largest; top-p keeps
    a token when the tokens strictly more likely than it hold less than top_p of the mass.
    `slack` > 0 widens the set by rounding-sized margins (float32 there, float64 here)."""
    kept = [i for i, s in enumerate(scores) if s > -math.inf]
    if top_k is not None and top_k < len(scores):
        kth = sorted(scores, reverse=True)[top_k - 1]
        kept = [i for i in kept if scores[i] >= kth]
    top = max(scores[i] for i in kept)
    weights = {i: math.exp(scores[i] - top) for i in kept}
    probs = {i: w / sum(weights.values()) for i, w in weights.items()}
    if top_p < 1:
        above = {i: sum(q for q in probs.values() if q > probs[i] * (1 + slack)) for i in probs}
        probs = {i: p for i, p in probs.items() if above[i] < top_p + slack}
    return probs


@settings(max_examples=150, deadline=None)
@given(
    row=logit_rows(),
    temperature=st.floats(0.05, 5.0),
    top_k=st.none() | st.integers(1, 12),
    top_p=st.floats(1e-3, 1.0) | st.just(1.0),
)
def test_samples_lie_in_the_allowed_set(
    row: list[float], temperature: float, top_k: int | None, top_p: float
) -> None:
    cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    logits = torch.tensor([row] * 1000)
    samples = sample_next(logits, cfg, torch.Generator().manual_seed(0))
    assert samples.shape == (1000,) and samples.dtype == torch.int64
    # The same float32 division as sample_next, so ties it sees are ties here too.
    scores = (torch.tensor(row) / temperature).tolist()
    emitted = set(samples.tolist())
    assert emitted <= set(allowed_tokens(scores, top_k, top_p, slack=1e-4))
    # Nothing is over-masked: every clearly allowed token with 5%+ of the mass shows up.
    likely = {i for i, p in allowed_tokens(scores, top_k, top_p, slack=0).items() if p > 0.05}
    assert likely <= emitted


@settings(max_examples=60, deadline=None)
@given(row=logit_rows(), top_p=st.floats(1e-3, 1.0))
def test_greedy_rules_pick_a_largest_logit(row: list[float], top_p: float) -> None:
    logits = torch.tensor([row] * 200)
    best = logits[0].max()  # in float32, where 5e-197 is 0 and ties with 0
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    greedy = sample_next(logits, SamplingConfig(temperature=0, top_k=3, top_p=top_p), generator)
    assert torch.equal(greedy, logits.argmax(dim=-1))
    assert torch.equal(generator.get_state(), state)  # temperature 0 draws nothing
    picked = sample_next(logits, SamplingConfig(temperature=1.0, top_k=1), generator)
    assert bool((logits[0, picked] == best).all())
    # Tiny top_p keeps the most likely token, and what ties with it in float32 probability
    # (logits 0 and 1e-38 do).
    probs = torch.softmax(logits[0] / 0.8, dim=0)
    picked = sample_next(logits, SamplingConfig(temperature=0.8, top_p=1e-9), generator)
    assert bool((probs[picked] == probs.max()).all())


@pytest.mark.parametrize(
    ("settings_", "keep"),
    [
        ({"temperature": 1.0}, [0, 1, 2, 3]),
        ({"temperature": 2.0}, [0, 1, 2, 3]),
        ({"temperature": 1.0, "top_k": 2}, [0, 3]),
        # softmax([1, 0, -1, .5]) = [.45, .17, .06, .28]: .45 < .7 <= .45 + .28
        ({"temperature": 1.0, "top_p": 0.7}, [0, 3]),
    ],
)
def test_frequencies_match_the_renormalized_softmax(settings_: dict, keep: list[int]) -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5])
    cfg = SamplingConfig(**settings_)
    samples = sample_next(logits.expand(20_000, 4), cfg, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(samples, minlength=4) / 20_000
    expected = torch.zeros(4)
    expected[keep] = torch.softmax(logits[keep] / cfg.temperature, dim=0)
    # std of a frequency <= sqrt(.25 / 20000) = .0035; .012 is 3.4 sigma, and zero means zero
    torch.testing.assert_close(frequencies, expected, atol=0.012, rtol=0)
    assert frequencies[expected == 0].sum() == 0


# --- SamplingConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1}, "temperature must be >= 0 (0 means greedy), got -1.0"),
        ({"temperature": float("nan")}, "temperature must be >= 0 (0 means greedy), got nan"),
        ({"top_p": 1.5}, "top_p must lie in (0, 1], got 1.5"),
        ({"top_p": 0}, "top_p must lie in (0, 1], got 0.0"),
        ({"top_k": 0}, "top_k must be >= 1, got 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
        ({"top_k": "many"}, "top_k: Input should be a valid integer"),
        ({"temprature": 1.0}, "temprature: Extra inputs are not permitted"),
    ],
)
def test_bad_sampling_settings_name_the_problem(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        SamplingConfig.checked(**kwargs)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value) and "Value error" not in str(error.value)


def test_checked_reports_every_problem_on_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        SamplingConfig.checked(temperature=-1, top_p=1.5)
    assert str(error.value) == (
        "temperature must be >= 0 (0 means greedy), got -1.0; top_p must lie in (0, 1], got 1.5"
    )


def test_checked_accepts_good_settings() -> None:
    cfg = SamplingConfig.checked(temperature=0, top_k=5, top_p=0.9, max_new_tokens=3, seed=7)
    assert cfg == SamplingConfig(temperature=0, top_k=5, top_p=0.9, max_new_tokens=3, seed=7)


def test_an_empty_prompt_is_an_error() -> None:
    cfg, params = small_gpt()
    with pytest.raises(ConfigError, match=r"^the prompt is empty$"):
        generate("gpt", params, cfg, [], GREEDY)
    with pytest.raises(ConfigError, match=r"^the prompt is empty$"):
        generate_text("gpt", params, cfg, CharTokenizer.train("ab"), "", GREEDY)


def test_bad_model_names_and_token_ids_are_errors() -> None:
    cfg, params = small_gpt()
    with pytest.raises(ConfigError, match="unknown model 'lstm'"):
        generate("lstm", params, cfg, [1], GREEDY)
    with pytest.raises(ConfigError, match="prompt token id 61 is outside"):
        generate("gpt", params, cfg, [1, 61], GREEDY)


# --- GPT: cache against recomputation ----------------------------------------------------------


def reference_greedy(params: dict, cfg: gpt.GPTConfig, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding spelled out: argmax of `gpt.apply` over the window, which restarts from
    its last block_size // 2 tokens whenever a new token would overflow it."""
    window, out = list(prompt), []
    for _ in range(n):
        logits = gpt.apply(params, torch.tensor([window]), cfg)[0, -1]
        out.append(int(logits.argmax()))
        window.append(out[-1])
        if len(window) > cfg.block_size:
            window = window[-(cfg.block_size // 2) :]
    return out


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_cached_greedy_decoding_equals_recomputation(positions: str) -> None:
    cfg, params = small_gpt(positions)
    prompt = [3, 1, 4, 1, 5]
    # 40 new tokens through a 16-token context: the cache is refilled three times.
    cached = list(generate("gpt", params, cfg, prompt, GREEDY))
    recomputed = list(generate_recompute(params, cfg, prompt, GREEDY))
    assert len(cached) == 40
    assert len(set(cached)) >= 5  # a model that repeats one token would prove little
    assert cached == recomputed == reference_greedy(params, cfg, prompt, 40)


# --- seeds, prompts, text ----------------------------------------------------------------------

TEXT = "Winter is coming. The north remembers. A Lannister always pays his debts.\n"


def char_model() -> tuple[CharTokenizer, gpt.GPTConfig, dict]:
    tokenizer = CharTokenizer.train(TEXT)
    cfg, params = small_gpt(vocab=tokenizer.vocab_size)
    return tokenizer, cfg, params


def test_the_seed_decides_the_text() -> None:
    tokenizer, cfg, params = char_model()

    def text(seed: int) -> str:
        sampling = SamplingConfig(temperature=1.0, max_new_tokens=30, seed=seed)
        return generate_text("gpt", params, cfg, tokenizer, "Winter", sampling)

    assert text(0) == text(0)
    assert text(0) != text(1)
    assert len(text(2)) == 30


@pytest.mark.parametrize("model", ["gpt", "rnn"])
def test_a_long_prompt_warns_and_keeps_its_end(model: str) -> None:
    if model == "gpt":
        cfg, params = small_gpt()
        context = None
    else:
        cfg = rnn.RNNConfig(vocab_size=61, hidden=16, embd=8)
        params, context = rnn.init(cfg, seed=0), 16
    prompt = list(range(20))
    message = "prompt of 20 tokens is longer than the context (16); keeping the last 16"
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        tokens = list(generate(model, params, cfg, prompt, GREEDY, context=context))
    assert record[0].filename == __file__  # the warning points at the caller
    assert len(tokens) == 40
    # Cropping is exactly keeping the last 16 tokens.
    assert tokens == list(generate(model, params, cfg, prompt[-16:], GREEDY, context=context))


def test_a_missing_character_is_named() -> None:
    tokenizer, cfg, params = char_model()
    with pytest.raises(DataError, match="'Z'"):
        generate_text("gpt", params, cfg, tokenizer, "Winter is Zero", GREEDY)


def test_streaming_writes_exactly_the_returned_text() -> None:
    tokenizer, cfg, params = char_model()
    stream = io.StringIO()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=50)
    text = generate_text("gpt", params, cfg, tokenizer, "Winter", sampling, stream=stream)
    assert stream.getvalue() == text and len(text) == 50
    assert text == generate_text("gpt", params, cfg, tokenizer, "Winter", sampling)


class ByteTokenizer:
    """UTF-8 bytes as ids, as SentencePiece's byte fallback emits them: a character may need
    several tokens, and a partial one decodes to U+FFFD until it is complete."""

    kind, suffix, vocab_size = "bytes", ".bytes", 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, path: object) -> object:
        raise NotImplementedError


def test_streaming_waits_for_characters_split_across_tokens() -> None:
    cfg, params = small_gpt(vocab=256)
    tokenizer = ByteTokenizer()
    stream = io.StringIO()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=300, seed=3)
    text = generate_text("gpt", params, cfg, tokenizer, "é", sampling, stream=stream)
    assert stream.getvalue() == text
    # Random bytes: the continuation holds characters completed by a later token.
    assert any(ord(c) > 127 and c != "\ufffd" for c in text)


def test_rnn_tokens_lie_in_the_vocabulary() -> None:
    cfg = rnn.RNNConfig(vocab_size=30, cell="lstm", n_layer=2, hidden=16, embd=8)
    params = rnn.init(cfg, seed=0)
    sampling = SamplingConfig(temperature=1.5, max_new_tokens=25)
    tokens = list(generate("rnn", params, cfg, [1, 2, 3], sampling, context=8))
    assert len(tokens) == 25 and all(0 <= t < 30 for t in tokens)
    assert len(set(tokens)) > 1


@pytest.mark.slow
def test_compiled_decoding_equals_eager_without_recompiling() -> None:
    cfg, params = small_gpt("rotary")
    cfg = cfg.model_copy(update={"n_layer": 1})  # a smaller graph compiles faster
    params = {**params, "blocks": params["blocks"][:1]}
    eager = list(generate("gpt", params, cfg, [3, 1, 4], GREEDY))
    assert len(set(eager)) >= 5
    # One compile for the one-token step, kept across positions and cache refills.
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch._dynamo.reset()
        compiled = list(generate("gpt", params, cfg, [3, 1, 4], GREEDY, compile=True))
    assert compiled == eager
