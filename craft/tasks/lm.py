"""`lm`: next-token prediction over a prepared text (ChatGOT).

Data: a text (a named source or a file) tokenized into train/val/test token files
(`craft.data.prepare`); training windows are a pure function of (seed, step). Metrics: loss,
perplexity, bits per token and, over a whole split, bits per character. A checkpoint carries
its tokenizer file beside it. While training it writes text samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from craft.data import datasets
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import (
    PreparedData,
    check_windows_fit,
    default_prepared_dir,
    open_split,
    prepare,
    read_meta,
)
from craft.data.sources import resolve_source
from craft.data.tokenizers import Tokenizer, load_tokenizer
from craft.errors import ConfigError, DataError
from craft.models.spec import ModelSpec
from craft.nn import next_token_loss
from craft.tasks.base import Apply, Batch, LossOut, Task, fill_field
from craft.tasks.text_samples import TextSampleConfig, TextSampleHook
from craft.train.hooks import Hook
from craft.tree import Params


class LanguageModeling(Task):
    """Next-token prediction; batches `{"inputs", "targets"}` of token ids `[B, window]`."""

    name = "lm"
    inputs = "tokens"
    unit = "tokens"
    config_names = ("DataConfig", "TokenizerConfig", "TextSampleConfig")

    def __init__(
        self,
        directory: Path,
        meta: dict[str, Any],
        tokenizer: Tokenizer,
        tokenizer_path: Path,
        data: DataConfig,
        samples: TextSampleConfig | None = None,
        *,
        verified: bool = False,
    ):
        self.directory, self.meta, self.tokenizer = directory, meta, tokenizer
        self.tokenizer_path, self.data = tokenizer_path, data
        # `prepare` checks every split against meta.json before it hands a folder back; other
        # folders are checked as each split is opened.
        self.verified = verified
        self.samples = samples or TextSampleConfig()
        self.window: int | None = data.window  # the model's context when unset
        self._splits: dict[str, np.ndarray] = {}
        self._chars: dict[str, int] = {}

    # -- data ------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, configs: dict[str, BaseModel]) -> str:
        return report(_prepare(configs))

    @classmethod
    def open(cls, configs: dict[str, BaseModel], *, verified: bool = False) -> LanguageModeling:
        if verified:  # just prepared and checked by this run: read, do not hash again
            directory = default_prepared_dir(
                _config(configs, DataConfig), _config(configs, TokenizerConfig)
            )
            prepared = PreparedData(directory, read_meta(directory), cached=True)
        else:
            prepared = _prepare(configs)  # a cache hit once `prepare` ran, its files verified
        samples = configs.get("TextSampleConfig")
        assert samples is None or isinstance(samples, TextSampleConfig)
        task = cls(
            prepared.directory, prepared.meta, load_tokenizer(prepared.tokenizer_path),
            prepared.tokenizer_path, _config(configs, DataConfig), samples, verified=True,
        )  # fmt: skip
        # Map every split now: a map keeps the file it opened even if another run prepares the
        # folder again later (files are replaced by rename), so this run reads the data it
        # verified. A folder prepared again meanwhile shows in its fingerprint.
        for name, count in prepared.meta["tokens"].items():
            if count:
                task.split(name)
        if read_meta(prepared.directory).get("fingerprint") != prepared.meta.get("fingerprint"):
            raise DataError(
                f"{prepared.directory} was prepared again from another recipe while this run "
                "opened it; give each recipe its own DataConfig.prepared_dir, and run again"
            )
        return task

    @classmethod
    def for_checkpoint(
        cls, meta: dict[str, Any], directory: Path, data_dir: str | None
    ) -> LanguageModeling:
        tokenizer_path = tokenizer_beside(meta, directory)
        stored = meta["configs"]
        # Paths stored in the checkpoint never redirect reads: the data is found from the
        # command line's data folder (default: data/) and the recipe it was prepared with.
        data = DataConfig.model_validate(
            {**stored.get("DataConfig", {}), "data_dir": data_dir or "data", "prepared_dir": None}
        )
        tok_cfg = TokenizerConfig.model_validate(stored.get("TokenizerConfig", {}))
        given = Path(data_dir) if data_dir else None
        # --data_dir may name the prepared folder itself (one made with --output_dir).
        is_prepared = given is not None and (given / "meta.json").is_file()
        prepared_dir = given if is_prepared else default_prepared_dir(data, tok_cfg)
        assert prepared_dir is not None
        tokenizer = load_tokenizer(tokenizer_path)
        task = cls(prepared_dir, read_meta(prepared_dir), tokenizer, tokenizer_path, data)
        if int(task.meta["vocab_size"]) != tokenizer.vocab_size:
            raise DataError(
                f"{prepared_dir} was prepared with a {task.meta['vocab_size']}-symbol "
                f"vocabulary, but the checkpoint's tokenizer has {tokenizer.vocab_size}"
            )
        return task

    def split(self, name: str) -> np.ndarray:
        if name not in self._splits:
            self._splits[name] = open_split(self.directory, name, verify=not self.verified)
        return self._splits[name]

    def train_batch(self, *, seed: int, step: int, size: int) -> Batch:
        return datasets.train_batch(
            self.split("train"), window=self._window(), batch_size=size, seed=seed, step=step
        )

    def eval_batches(self, split: str, size: int) -> Iterator[Batch]:
        return datasets.eval_batches(self.split(split), window=self._window(), batch_size=size)

    # -- model -----------------------------------------------------------------------------

    def fill_model_config(self, spec: ModelSpec, cfg: BaseModel) -> BaseModel:
        cfg = fill_field(
            cfg, "vocab_size", int(self.meta["vocab_size"]), "the dataset's vocabulary"
        )
        context = spec.max_length(cfg)
        window = self.data.window or context
        if window is None:
            raise ConfigError(
                f"DataConfig.window is unset and the {spec.name!r} model has no longest context "
                "to take it from; set DataConfig.window"
            )
        if context is not None and window > context:
            raise ConfigError(
                f"DataConfig.window = {window} exceeds {type(cfg).__name__}'s longest context "
                f"({context})"
            )
        check_windows_fit(self.meta["tokens"], window, self.data.split_ratios, self.data.source)
        self.window = window
        return cfg

    def example_shape(self, spec: ModelSpec, cfg: BaseModel) -> tuple[int, ...]:
        return (self._window(),)

    def loss(
        self, apply: Apply, params: Params, batch: Batch, *, rng: torch.Tensor | None
    ) -> LossOut:
        return next_token_loss(apply(params, batch["inputs"], rng=rng), batch["targets"])

    def summarize(self, sums: dict[str, float], split: str, *, whole: bool) -> dict[str, float]:
        mean = sums["loss_sum"] / max(sums["weight"], 1.0)
        results = {
            "loss": mean,
            "perplexity": math.exp(min(mean, 700.0)),
            "bits_per_token": mean / math.log(2),
            "tokens": sums["weight"],
        }
        if whole:
            # Tokens per character of this split turn bits per token into bits per character
            # (the same number for a char tokenizer).
            tokens = self.split(split)
            if split not in self._chars:
                self._chars[split] = len(self.tokenizer.decode(tokens))
            if self._chars[split]:
                results["bits_per_char"] = (
                    results["bits_per_token"] * len(tokens) / self._chars[split]
                )
        return results

    # -- checkpoints and previews ----------------------------------------------------------

    def checkpoint_meta(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer_path.name,
            "vocab_size": self.tokenizer.vocab_size,
            "window": self.window,
            # The prepared data's recipe (input sha256, tokenizer, splits): which data this is.
            "data": self.meta.get("fingerprint"),
        }

    def checkpoint_files(self) -> list[Path]:
        return [self.tokenizer_path]

    def previews(self, trackers: Any, every: int) -> list[Hook]:
        return [TextSampleHook(self.tokenizer, self.samples, every, trackers)]

    def describe(self) -> str:
        return report(PreparedData(self.directory, self.meta, cached=True))

    def _window(self) -> int:
        if self.window is None:
            raise ConfigError("the lm task's window is unknown: call fill_model_config first")
        return self.window


def tokenizer_beside(meta: dict[str, Any], directory: Path) -> Path:
    """The tokenizer file a checkpoint's record names: a plain file name in the checkpoint's
    own folder (`directory`), never a path that could read elsewhere."""
    name = str((meta.get("task_meta") or {}).get("tokenizer") or meta.get("tokenizer") or "")
    if not name or Path(name).name != name:
        raise DataError(
            f"the checkpoint in {directory} names no plain tokenizer file (got {name!r})"
        )
    path = directory / name
    if not path.is_file():
        raise DataError(
            f"the checkpoint in {directory} has no tokenizer beside it (expected {path}); copy "
            "the dataset's tokenizer file (tokenizer.json or tokenizer.model) next to it"
        )
    return path


def report(prepared: PreparedData) -> str:
    """`<folder>: cached; char tokenizer, vocab 65; tokens: train 1, val 2, test 3`."""
    meta = prepared.meta
    tokens = ", ".join(f"{name} {count:,}" for name, count in meta["tokens"].items())
    state = "cached" if prepared.cached else "prepared"
    return (
        f"{prepared.directory}: {state}; {meta['tokenizer']['kind']} tokenizer, "
        f"vocab {meta['vocab_size']:,}; tokens: {tokens}"
    )


def _prepare(configs: dict[str, BaseModel]) -> PreparedData:
    data, tok = _config(configs, DataConfig), _config(configs, TokenizerConfig)
    return prepare(resolve_source(data), default_prepared_dir(data, tok), data, tok)


def _config(configs: dict[str, BaseModel], kind: type[Any]) -> Any:
    found = configs.get(kind.__name__) or kind()
    assert isinstance(found, kind)
    return found
