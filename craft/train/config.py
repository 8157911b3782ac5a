"""Training settings, bound with gin and checked by Pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from craft.config import configurable, unknown_name
from craft.models import MODELS
from craft.train.step import CompileMode, CompileScope


@configurable
class TrainConfig(BaseModel):
    """How long and how to train, evaluate, checkpoint and sample."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: str = "gpt"
    """A registered model (craft.models.MODELS: gpt, rnn, cnn, mlp); its shape comes from its
    config (GPTConfig, CNNConfig, ...)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(12, gt=0)
    """Sequences per optimizer step (split into accum_steps micro-batches)."""
    accum_steps: int = Field(1, gt=0)
    memory_budget_mb: float | None = Field(None, gt=0)
    """Memory the training may take, in MiB (2**20 bytes): params, gradients, optimizer state
    and activations, measured as the live memory above the level before the state is built
    (CPU: the heap; GPU: torch.cuda.max_memory_allocated). Before training, Craft plans how
    the batch fits: the micro-batch (accum_steps) and the model's activation checkpointing
    (GPTConfig.remat), from an estimate checked by one measured step; it prints the plan and
    records it in the run's config. A value you set yourself (accum_steps, remat) is kept and
    checked instead of chosen. Too small a budget is refused with the smallest that fits.
    None: no plan."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    clip_norm: float | None = Field(1.0, gt=0)
    compile: bool = True
    compile_mode: CompileMode = "default"
    """torch.compile's mode; "reduce-overhead" replays CUDA graphs on a GPU (small models are
    launch-bound there) and needs accum_steps = 1."""
    compile_scope: CompileScope = "auto"
    """What is compiled: "regions" compiles the model's repeated block once and reuses it for
    every layer and runs the update with the optimizer's fused kernel (a cold start in
    seconds); "whole" compiles the whole forward and the whole update as one graph each.
    "auto": regions on a CPU, whole on a GPU (and with CUDA graphs)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0)
    """CPU threads for torch; None keeps torch's default."""
    eval_every: int = Field(500, ge=0)
    """Steps between evaluations on the val split (0: only at the end)."""
    eval_batches: int | None = Field(None, gt=0)
    """Batches per periodic evaluation (None: the whole split). The final one is always whole."""
    eval_batch_size: int = Field(64, gt=0)
    checkpoint_every: int = Field(500, ge=0)
    """Steps between checkpoints (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep (the best by val loss is kept as well)."""
    sample_every: int = Field(500, ge=0)
    """Steps between text samples written to samples.txt (0: only at the end)."""
    sample_tokens: int = Field(200, gt=0)
    sample_prompt: str | None = None
    """Prompt for samples; None: the first tokens of the val split."""
    dist_timeout_s: float = Field(300.0, gt=0)
    """Under torchrun: how long a rank waits for the others before failing (a dead or hung
    rank then stops the run with an error instead of a silent hang)."""
    shard_optimizer: bool = False
    """Under torchrun: each rank keeps only its 1/N slice of the optimizer state (ZeRO-1);
    gradients are reduce-scattered and params all-gathered instead of one all-reduce."""
    deterministic: bool | None = None
    """Bit-identical compiled runs for the same config and seed (PyTorch's deterministic mode
    in the compiled forward and backward). None: on for the CPU, where it costs nothing
    measurable; off on GPUs, where it would swap some kernels (e.g. attention's backward) for
    slower ordered ones. Eager runs are bit-identical either way."""
    hooks: list[str] = []
    """Extra hooks, as import paths of Hook classes: ['my_package.hooks.MyHook']."""
    trainable: list[str] | None = None
    """Which params train, as fnmatch patterns on dotted names ('blocks.5.*', 'ln_f.*'); the
    others are frozen (no gradient, no optimizer state, no update). None: all train, or with
    LoRA (LoRAConfig.rank > 0) the adapters only; with LoRA these base params train too."""
    ema_decay: float | None = None
    """Keep an exponential moving average (EMA) of the trained params, with this decay in
    (0, 1) (e.g. 0.999: about the last 1000 steps); None: no EMA. After each optimizer update,
    ema = d * ema + (1 - d) * params. Evaluation, the best checkpoint by val loss, previews
    and samples use the EMA, and so do evaluate and generate on the checkpoints (which hold it
    as `ema.*`)."""
    ema_warmup: bool = True
    """With an EMA: the decay of the update that brings the step to n (n = 1, 2, ...) is
    min(ema_decay, (1 + n) / (10 + n)), so a short run's average is not dominated by the
    initial params; False: ema_decay from the first step."""

    @field_validator("model")
    @classmethod
    def _registered_model(cls, name: str) -> str:
        if name not in MODELS:
            raise ValueError(unknown_name("model", name, MODELS))
        return name

    @field_validator("ema_decay")
    @classmethod
    def _decay_in_unit_interval(cls, decay: float | None) -> float | None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(
                f"ema_decay must be in (0, 1), e.g. 0.999 (the share of the average kept at "
                f"each step), or None for no EMA; got {decay}"
            )
        return decay

    @model_validator(mode="after")
    def _accumulation_divides_batch(self) -> TrainConfig:
        if self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of accum_steps={self.accum_steps}"
            )
        graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        if graphs and self.compile_scope == "regions":
            raise ValueError(
                f"compile_mode={self.compile_mode!r} replays the whole step as CUDA graphs: use "
                "compile_scope='whole' or 'auto'"
            )
        if graphs and self.accum_steps > 1:
            raise ValueError(
                f"compile_mode={self.compile_mode!r} replays CUDA graphs, which needs "
                f"accum_steps=1 (got {self.accum_steps})"
            )
        return self
