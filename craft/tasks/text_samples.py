"""The text preview: samples from the model as it trains, into samples.txt and the trackers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from craft import tree
from craft.config import configurable
from craft.data.tokenizers import Tokenizer
from craft.errors import DataError
from craft.files import is_out_of_space, out_of_space
from craft.generate import SamplingConfig, generate_text
from craft.train.hooks import Hook, RunInfo

SAMPLES_FILE = "samples.txt"
_HEADER = re.compile(r"^=== step (\d+) ===$", re.MULTILINE)


@configurable
class TextSampleConfig(BaseModel):
    """What a language model writes every `TrainConfig.sample_every` steps."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    tokens: int = Field(200, gt=0)
    """Tokens per sample."""
    prompt: str | None = None
    """The sample's prompt; None: a newline (or the vocabulary's first symbol)."""


class TextSampleHook(Hook):
    """Every `every` steps (0: only at the end) and at the end, one sample from the prompt."""

    def __init__(self, tokenizer: Tokenizer, cfg: TextSampleConfig, every: int, trackers: Any):
        self.tokenizer, self.cfg, self.every, self.trackers = tokenizer, cfg, every, trackers
        self.last_step: int | None = None

    def on_start(self, run: RunInfo) -> None:
        if run.start_step:  # resumed: the samples past the checkpoint are written again
            drop_samples_after(run.run_dir / SAMPLES_FILE, run.start_step)

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        if self.every and step % self.every == 0 and step < run.total_steps:
            self.sample(run, step)

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        if summary["status"] == "finished" and summary["steps"] != self.last_step:
            self.sample(run, summary["steps"])

    def sample(self, run: RunInfo, step: int) -> str:
        prompt = self.cfg.prompt or "\n"
        try:
            self.tokenizer.encode(prompt)
        except DataError:  # a vocabulary without the default prompt: start from its first symbol
            prompt = self.tokenizer.decode([0])
        assert run.read_state is not None
        params = run.read_state().params
        device = tree.leaves(params)[0].device  # sample where the model trains
        sampling = SamplingConfig(max_new_tokens=self.cfg.tokens, seed=step)
        text = prompt + generate_text(
            run.model_name, params, run.model_config, self.tokenizer, prompt, sampling,
            device=device,
        )  # fmt: skip
        with open(run.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"=== step {step} ===\n{text}\n\n")
        if self.trackers is not None:
            self.trackers.log_text("samples", text, step)
        self.last_step = step
        return text


def drop_samples_after(path: Path, step: int) -> None:
    """Remove the samples of steps past `step` from a samples file (renamed into place)."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    cut = next((m.start() for m in _HEADER.finditer(text) if int(m.group(1)) > step), None)
    if cut is not None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text[:cut], encoding="utf-8")
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if is_out_of_space(error):
                raise out_of_space(path, cut, error) from None
            raise
        tmp.replace(path)
