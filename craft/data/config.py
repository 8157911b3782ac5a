"""The data and tokenizer settings, bound with gin and checked by Pydantic."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from craft.config import configurable


def _check_split_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    if any(r < 0 for r in ratios):
        raise ValueError(f"split ratios must not be negative, got {list(ratios)}")
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(f"split ratios must sum to 1, got {list(ratios)} (sum {sum(ratios):g})")
    if ratios[0] == 0 or ratios[1] == 0:
        # Training reads train and val: an empty one would fail only once training starts.
        raise ValueError(
            f"split ratios {list(ratios)} leave the {'train' if ratios[0] == 0 else 'val'} "
            "split empty; training needs text in both (test may be 0)"
        )
    return ratios


SplitRatios = Annotated[tuple[float, float, float], AfterValidator(_check_split_ratios)]


@configurable
class DataConfig(BaseModel):
    """Where the text comes from and how it becomes token ids."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    source: str = Field("got", min_length=1)
    """'got' (the Game of Thrones season 1 scripts) or the path of a UTF-8 text file."""
    data_dir: str = "data"
    """Downloads, raw text and prepared datasets live under this folder."""
    tokenizer: Literal["char", "subword"] = "char"
    tokenizer_file: str | None = None
    """An existing tokenizer to use instead of training one: a .json char tokenizer (with
    tokenizer='char'), a .model SentencePiece or a Hugging Face tokenizer.json (subword)."""
    split_ratios: SplitRatios = (0.9, 0.05, 0.05)
    """Train, val, test: contiguous slices of the text, in file order."""
    window: int | None = Field(None, gt=0)
    """Tokens per training example; None: the model's longest context (GPTConfig.block_size).
    Every non-empty split must hold at least one window plus its last target."""
    errors: Literal["strict", "replace"] = "strict"
    """What to do with bytes that are not UTF-8: fail, or replace them with U+FFFD."""
    prepared_dir: str | None = None
    """Where the prepared dataset goes; by default data_dir/prepared/<source>-<tokenizer>."""


@configurable
class TokenizerConfig(BaseModel):
    """How a SentencePiece tokenizer is trained (subword data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vocab_size: int = Field(2048, gt=0)
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = Field(1.0, gt=0, le=1)


@configurable
class ImageDataConfig(BaseModel):
    """A labelled image dataset (classification) and its augmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    source: Literal["mnist"] = "mnist"
    """A named image source (`python -m craft.main fetch mnist`)."""
    data_dir: str = "data"
    """Downloads and prepared arrays live under this folder."""
    val_size: int = Field(5000, ge=1)
    """The last val_size training images are the val split; test stays held out."""
    max_shift: int = Field(0, ge=0, le=8)
    """Augmentation: each training image moves by up to this many pixels along each axis
    (zero fill), drawn from (seed, step) like the batch itself."""
