"""The sampling hook: text from the model as it trains, into samples.txt and W&B."""

from __future__ import annotations

from typing import Any

import torch

from craft import tree
from craft.errors import DataError
from craft.generate import SamplingConfig, generate_text
from craft.metrics import MetricsLogger
from craft.train.hooks import Hook, RunInfo


class SampleHook(Hook):
    """Every `TrainConfig.sample_every` steps and at the end, one sample from the prompt."""

    def __init__(self, metrics: MetricsLogger | None = None):
        self.metrics = metrics
        self.last_step: int | None = None

    def on_step_end(self, run: RunInfo, step: int, metrics: dict[str, float]) -> None:
        every = run.configs["TrainConfig"]["sample_every"]
        if every and step % every == 0 and step < run.total_steps:
            self.sample(run, step)

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        if summary["status"] == "finished" and summary["steps"] != self.last_step:
            self.sample(run, summary["steps"])

    def sample(self, run: RunInfo, step: int) -> str:
        settings = run.configs["TrainConfig"]
        prompt = settings["sample_prompt"] or "\n"
        try:
            run.tokenizer.encode(prompt)
        except DataError:  # a vocabulary without the default prompt: start from its first symbol
            prompt = run.tokenizer.decode([0])
        assert run.read_state is not None
        params = run.read_state().params
        device = tree.leaves(params)[0].device  # sample where the model trains
        sampling = SamplingConfig(max_new_tokens=settings["sample_tokens"], seed=step)
        with torch.no_grad():
            text = prompt + generate_text(
                run.model_name,
                params,
                run.model_config,
                run.tokenizer,
                prompt,
                sampling,
                device=device,
            )
        with open(run.run_dir / "samples.txt", "a", encoding="utf-8") as handle:
            handle.write(f"=== step {step} ===\n{text}\n\n")
        if self.metrics is not None:
            self.metrics.log_samples(step, text)
        self.last_step = step
        return text
