"""Loading a checkpoint to use it: its model, params, task and (for text) tokenizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft import checkpoint
from craft.checkpoint import CheckpointError
from craft.data.tokenizers import Tokenizer, load_tokenizer
from craft.errors import ConfigError
from craft.models import MODELS, ModelSpec
from craft.tasks import TASKS, Task
from craft.tree import Params


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
        """The task it was trained on, over the data found from `data_dir` (default data/)."""
        if self.task_name not in TASKS:
            raise CheckpointError(f"{self.path} names an unknown task {self.task_name!r}")
        task = TASKS[self.task_name].for_checkpoint(self.meta, self.path.parent, data_dir)
        # As in training: the data must fit the model (vocabulary, classes, image shape), and
        # the task learns what it takes from the model (a text window).
        task.fill_model_config(self.spec, self.model_cfg)
        return task

    def loss_fn(self, task: Task) -> Callable[..., Any]:
        return functools.partial(task.loss, functools.partial(self.spec.apply, cfg=self.model_cfg))

    def tokenizer(self) -> Tokenizer:
        """A text model's tokenizer: a plain file name beside the checkpoint."""
        if self.spec.inputs != "tokens":
            raise ConfigError(f"{self.path} holds a {self.spec.name!r} model, which takes no text")
        task_meta = self.meta.get("task_meta") or {}
        name = str(task_meta.get("tokenizer") or self.meta.get("tokenizer") or "")
        if not name or Path(name).name != name:
            raise CheckpointError(f"{self.path} names no plain tokenizer file (got {name!r})")
        path = self.path.parent / name
        if not path.is_file():
            raise CheckpointError(
                f"{self.path} has no tokenizer beside it (expected {path}); copy the dataset's "
                "tokenizer file (tokenizer.json or tokenizer.model) next to the checkpoint"
            )
        return load_tokenizer(path)


def load_for_inference(path: Path) -> Loaded:
    """Params only (no optimizer state), checked against the config saved in the checkpoint."""
    path = Path(path)
    meta = checkpoint.read_meta(path)
    name = meta.get("model")
    if name not in MODELS:
        raise CheckpointError(f"{path} names an unknown model {name!r}")
    spec = MODELS[str(name)]
    model_cfg = spec.config.model_validate(meta["model_config"])
    params, _ = checkpoint.load(path, like=spec.init(model_cfg, seed=0), prefix="params")
    return Loaded(path=path, spec=spec, model_cfg=model_cfg, params=params, meta=meta)
