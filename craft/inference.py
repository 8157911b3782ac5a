"""Loading a checkpoint to use it: its model, params, task and (for text) tokenizer."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft.checkpoint import CheckpointError
from craft.data.tokenizers import Tokenizer, load_tokenizer
from craft.errors import ConfigError, DataError
from craft.models import ModelSpec
from craft.tasks import TASKS, Task
from craft.tasks.lm import tokenizer_beside
from craft.train.weights import load_model
from craft.tree import Params

COMMAND_FOR = {
    "lm": "generate (text)",
    "classify": "evaluate (a classifier)",
    "diffusion": "sample to draw its images",
}
"""The command that uses a checkpoint of each task, for messages that redirect the user."""


@dataclass(frozen=True)
class Loaded:
    """A trained model ready to use: its spec, config, params and the checkpoint's metadata."""

    path: Path
    spec: ModelSpec
    model_cfg: Any
    params: Params
    meta: dict[str, Any]

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def task_name(self) -> str:
        return str(self.meta.get("task", "lm"))  # checkpoints before tasks were all lm

    def task(self, data_dir: str | None = None) -> Task:
        """The task it was trained on, over the data found from `data_dir`.

        Without `data_dir`: `data/` in the working folder, else the data folder of the run,
        found from where the run folder sits (so evaluation works from any working folder).
        """
        if self.task_name not in TASKS:
            raise CheckpointError(f"{self.path} names an unknown task {self.task_name!r}")
        candidates = [data_dir] if data_dir is not None else [None, *self._run_data_dir()]
        first_error: DataError | None = None
        for candidate in candidates:
            try:
                task = self._open_task(candidate)
                break
            except DataError as error:
                first_error = first_error or error
        else:
            assert first_error is not None
            raise first_error
        # As in training: the data must fit the model (vocabulary, classes, image shape), and
        # the task learns what it takes from the model (a text window).
        task.fill_model_config(self.spec, self.model_cfg)
        recorded = (self.meta.get("task_meta") or {}).get("data")
        found = task.checkpoint_meta().get("data")
        if recorded and found and recorded != found:  # allowed: scoring a model on other text
            print(
                f"craft: warning: {task.describe()}: not the data {self.path.name} was trained "
                "on (another text, tokenizer or split); scoring it anyway",
                file=sys.stderr,
            )
        return task

    def _open_task(self, data_dir: str | None) -> Task:
        try:
            return TASKS[self.task_name].for_checkpoint(self.meta, self.path.parent, data_dir)
        except (KeyError, TypeError, ValueError) as error:  # ValidationError is a ValueError
            raise CheckpointError(
                f"{self.path}: its metadata does not describe a {self.task_name!r} run "
                f"({type(error).__name__}: {error})"
            ) from None

    def _run_data_dir(self) -> list[str]:
        """The run's data folder, resolved against the run folder: a run in
        `<root>/<output_dir>/<name>/<date>/<time>/` kept its relative `data_dir` in `<root>`.
        Only relative paths without `..` are followed, so a record cannot point elsewhere."""
        run = self.meta["configs"].get("RunConfig", {})
        stored = next(
            (cfg["data_dir"] for cfg in self.meta["configs"].values() if "data_dir" in cfg), None
        )
        output_dir, name = Path(str(run.get("output_dir", ""))), str(run.get("name", ""))
        if not stored or not name or output_dir.is_absolute() or ".." in output_dir.parts:
            return []
        data = Path(str(stored))
        if data.is_absolute() or ".." in data.parts:
            return []
        run_dir = self.path.resolve().parent.parent  # <run>/checkpoints/<file>
        depth = len(output_dir.parts) + 2  # <output_dir>/<name>/<date>/<time>
        parents = run_dir.parents
        if len(parents) <= depth or run_dir.parents[1].name != name:
            return []
        return [str(parents[depth] / data)]

    def loss_fn(self, task: Task) -> Callable[..., Any]:
        return functools.partial(task.loss, functools.partial(self.spec.apply, cfg=self.model_cfg))

    def tokenizer(self) -> Tokenizer:
        """A text model's tokenizer: a plain file name beside the checkpoint."""
        if self.spec.inputs != "tokens":
            hint = COMMAND_FOR.get(self.task_name)
            raise ConfigError(
                f"{self.path} holds a {self.spec.name!r} model trained for the "
                f"{self.task_name!r} task, which takes no text" + (f"; use {hint}" if hint else "")
            )
        path = tokenizer_beside(self.meta, self.path.parent)
        tokenizer = load_tokenizer(path)
        model_vocab = getattr(self.model_cfg, "vocab_size", None)
        # The model's table may be padded past the tokenizer's (GPT-2 style), never shorter.
        if model_vocab is not None and tokenizer.vocab_size > model_vocab:
            raise CheckpointError(
                f"{path} has {tokenizer.vocab_size} symbols, more than the {model_vocab} of the "
                f"model in {self.path.name}: not the tokenizer it was trained with"
            )
        return tokenizer


def load_for_inference(path: Path) -> Loaded:
    """Params only (no optimizer state), checked against the config saved in the checkpoint.

    The file is untrusted: its record is validated, the model it claims is counted and then
    shaped on the meta device against the file's tensor table, and only then are the tensors
    read, so nothing is allocated that the file does not hold.
    """
    path = Path(path)
    meta, spec, model_cfg, params = load_model(path)
    return Loaded(path=path, spec=spec, model_cfg=model_cfg, params=params, meta=meta.as_dict())
