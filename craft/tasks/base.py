"""`Task`: what a kind of training is, and all the loop, the step and evaluation know of it.

A task owns its data (preparing it, training batches as a pure function of (seed, step),
evaluation batches per split), its loss (a mean and the weight it averages over, plus summable
counts), how evaluation sums become named metrics, what a checkpoint must carry to be used
later, and what it shows while training. The model enters only as `apply`, from its ModelSpec.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from craft.errors import ConfigError
from craft.models.spec import Inputs, ModelSpec
from craft.train.hooks import Hook
from craft.tree import Params

Batch = dict[str, torch.Tensor]
Apply = Callable[..., torch.Tensor]
"""A model's `apply` with its config bound: `apply(params, inputs, *, rng=None)`."""
LossOut = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Task(abc.ABC):
    """One kind of training. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    inputs: ClassVar[Inputs]
    """What the task feeds a model's `apply`: the spec's `inputs` must match."""
    unit: ClassVar[str]
    """What the loss's weight counts ('tokens', 'images'): throughput is reported per unit."""
    config_names: ClassVar[tuple[str, ...]]
    """The configurable models this task reads (besides the run's, the model's, the optimizer's)."""
    final_splits: ClassVar[tuple[str, ...]] = ("val",)
    """Splits evaluated whole at the end of a run (the summary reports them)."""

    # -- data ------------------------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def prepare(cls, configs: dict[str, BaseModel]) -> str:
        """Fetch and prepare the data (cached; one process does it); a one-line report."""

    @classmethod
    @abc.abstractmethod
    def open(cls, configs: dict[str, BaseModel], *, verified: bool = False) -> Task:
        """The task over data that `prepare` made ready. `verified`: this run's `prepare` has
        just checked it, so it is opened without checking again (under torchrun every rank
        would otherwise hash the whole dataset in turn)."""

    @classmethod
    @abc.abstractmethod
    def for_checkpoint(cls, meta: dict[str, Any], directory: Path, data_dir: str | None) -> Task:
        """The task a checkpoint was trained on, for evaluation: what the checkpoint carries
        (`checkpoint_meta`, files beside it) and the data found from `data_dir` (the command
        line), never from paths stored in the checkpoint."""

    @abc.abstractmethod
    def train_batch(self, *, seed: int, step: int, size: int) -> Batch:
        """`size` training examples: a pure function of the arguments."""

    @abc.abstractmethod
    def eval_batches(self, split: str, size: int) -> Iterator[Batch]:
        """A whole split, in order, every example once."""

    # -- model -----------------------------------------------------------------------------

    @abc.abstractmethod
    def fill_model_config(self, spec: ModelSpec, cfg: BaseModel) -> BaseModel:
        """`cfg` with the fields the data decides (vocab size, classes) filled in and checked."""

    @abc.abstractmethod
    def example_shape(self, spec: ModelSpec, cfg: BaseModel) -> tuple[int, ...]:
        """One training example's shape as the model sees it, for `flops_per_example`."""

    @abc.abstractmethod
    def loss(
        self, apply: Apply, params: Params, batch: Batch, *, rng: torch.Tensor | None
    ) -> LossOut:
        """(mean loss, {"weight": n, ...sums}): sums add up over batches and ranks."""

    @abc.abstractmethod
    def summarize(self, sums: dict[str, float], split: str, *, whole: bool) -> dict[str, float]:
        """Named metrics from summed loss (`loss_sum`), weight and the loss's other sums;
        `whole`: the sums cover the whole split."""

    # -- checkpoints and previews ----------------------------------------------------------

    @abc.abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON-able facts a checkpoint must carry to be used later (tokenizer file, classes)."""

    def checkpoint_files(self) -> list[Path]:
        """Files copied beside the checkpoints (a tokenizer)."""
        return []

    def previews(self, trackers: Any, every: int) -> list[Hook]:
        """Hooks that show the model while it trains (text samples, an image grid)."""
        return []

    def describe(self) -> str:
        """One line about the data, printed when a run starts."""
        return self.name

    # -- shared helpers --------------------------------------------------------------------

    def check_model(self, spec: ModelSpec) -> None:
        """Refuse a model whose inputs this task cannot feed."""
        if spec.inputs != self.inputs:
            raise ConfigError(
                f"TrainConfig.model = {spec.name!r} takes {spec.inputs}, but the {self.name!r} "
                f"task feeds it {self.inputs}; pick a model that takes {self.inputs}"
            )


def fill_field(cfg: BaseModel, field: str, value: int, source: str) -> BaseModel:
    """Set a data-decided field left None; refuse a value that disagrees with the data."""
    given = getattr(cfg, field)
    if given is not None and given != value:
        raise ConfigError(
            f"{type(cfg).__name__}.{field} = {given}, but {source} has {value}; leave it "
            f"unset to take it from the data"
        )
    return cfg.model_copy(update={field: value})
