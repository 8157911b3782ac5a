"""The reference judge of generated digits: an MNIST CNN trained by Craft from a recipe pinned
here, cached under the data folder and trained on first use.

    judge = ensure_judge("data", device="cpu")     # trains it the first time (about a minute)
    judge.logits(images), judge.features(images)   # images [N, 1, 28, 28]: uint8 or [0, 1]

The judge lives in `<data_dir>/judges/mnist-cnn-<recipe hash>/`: `judge.safetensors` (a Craft
checkpoint of the `classify` task, readable by `load_for_inference` and `evaluate`) and
`judge.json` (the recipe, the file's sha256, its test accuracy, how long it trained, where). A
changed recipe hashes to another folder, so an old judge is never taken for a new one.

A judge is trained into a temporary folder beside it and renamed into place, under a lock file
per recipe: concurrent evaluations train it once, and an interrupted training leaves no half
judge (its temporary folder is removed by the next one). A judge whose files do not match their
record (a damaged or edited file) is reported and trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from craft.checkpoint import CheckpointError
from craft.data.config import ImageDataConfig
from craft.data.text import folder_lock, sha256_file, write_atomic
from craft.errors import CraftError
from craft.inference import load_for_inference
from craft.models import cnn
from craft.optim import AdamW, Schedule
from craft.runs import RunConfig
from craft.tasks import TASKS
from craft.tracking import MetricsConfig
from craft.train.config import TrainConfig
from craft.train.loop import fit, make_setup
from craft.tree import Params, tree_map

JUDGE_FILE = "judge.safetensors"
RECORD_FILE = "judge.json"


class JudgeError(CraftError):
    """A judge that cannot be trained or used."""


@dataclass(frozen=True)
class JudgeRecipe:
    """How the judge is trained: the MNIST recipe of `gin/mnist.gin` (the CNN of
    `gin/models/cnn.gin`, AdamW, warmup-cosine, shifts of up to 2 pixels), shortened to 2
    epochs. Every field is part of the hash that names the judge's folder."""

    seed: int = 0
    steps: int = 430  # 2 epochs of 215 batches of 256 (55,000 training images)
    batch_size: int = 256
    val_size: int = 5000
    max_shift: int = 2
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dropout: float = 0.25
    peak_lr: float = 3e-3
    warmup_steps: int = 50
    beta2: float = 0.99
    weight_decay: float = 0.05
    compile: bool = False  # eager: bit-identical judges from identical runs on a CPU

    @property
    def identity(self) -> str:
        """A short hash of every field: the judge's folder is `mnist-cnn-<identity>`."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def configs(
        self, data_dir: str | Path, run_dir: str | Path, device: str
    ) -> dict[str, BaseModel]:
        """The run's configs, built here (no gin state is read or changed)."""
        configs: list[BaseModel] = [
            RunConfig(name="judge", task="classify", output_dir=str(run_dir), seed=self.seed),
            TrainConfig(
                model="cnn", steps=self.steps, batch_size=self.batch_size,
                compile=self.compile, device="cuda" if device == "cuda" else "cpu",
                eval_every=0, eval_batch_size=1000, checkpoint_every=0, keep_checkpoints=1,
                sample_every=0,
            ),
            MetricsConfig(wandb="disabled", progress_bar=False),
            ImageDataConfig(
                source="mnist", data_dir=str(data_dir), val_size=self.val_size,
                max_shift=self.max_shift,
            ),
            cnn.CNNConfig(channels=self.channels, kernel=3, hidden=self.hidden,
                          dropout=self.dropout),
            AdamW(beta2=self.beta2, weight_decay=self.weight_decay),
            Schedule(kind="warmup_cosine", peak_lr=self.peak_lr, final_lr=0.0,
                     warmup_steps=self.warmup_steps),
        ]  # fmt: skip
        return {type(cfg).__name__: cfg for cfg in configs}


RECIPE = JudgeRecipe()


@dataclass(frozen=True)
class Judge:
    """A trained classifier used as a measuring instrument, evaluated without gradients in
    batches of `batch_size` on `device`; outputs come back on the CPU as float32."""

    path: Path
    model_cfg: cnn.CNNConfig
    params: Params  # on `device`
    mean: float  # the normalisation it was trained with (pixels scaled to [0, 1])
    std: float
    device: torch.device
    record: dict[str, Any]  # judge.json: recipe, sha256, test accuracy, training time
    batch_size: int = 1000

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """`[N, 10]` for images `[N, 1, 28, 28]`: uint8 pixels, or floats in [0, 1]."""
        return self._run(cnn.apply, images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate activations `[N, F]` (the hidden layer, F = 128) of the same images."""
        return self._run(cnn.features, images)

    def _run(self, fn: Callable[..., torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("the judge got no images")
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size].to(self.device)
                pixels = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
                x = (pixels - self.mean) / self.std
                out.append(fn(self.params, x, self.model_cfg).float().cpu())
        return torch.cat(out)


def judge_dir(data_dir: str | Path, recipe: JudgeRecipe = RECIPE) -> Path:
    """Where the judge of `recipe` lives (or will)."""
    return Path(data_dir) / "judges" / f"mnist-cnn-{recipe.identity}"


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_judge(
    data_dir: str | Path,
    *,
    device: str | torch.device,
    log: Callable[[str], None] = _to_stderr,
    recipe: JudgeRecipe = RECIPE,
) -> Judge:
    """The judge of `recipe`, loaded from its folder; trained there first when it is missing
    or damaged (MNIST is fetched into `data_dir` if needed). `log` gets one line when training
    starts and one when it ends (stderr by default, so stdout stays the caller's)."""
    device = torch.device(device)
    folder = judge_dir(data_dir, recipe)
    with contextlib.suppress(JudgeError):  # a damaged judge is reported under the lock below
        return load_judge(folder, device=device, recipe=recipe)
    with folder_lock(folder.parent, f".{folder.name}.lock"):
        problem = None
        if folder.exists():  # another process may have trained it while this one waited
            try:
                return load_judge(folder, device=device, recipe=recipe)
            except JudgeError as error:
                problem = str(error)
        _remove_leftovers(folder)
        if problem is None:
            log(
                f"craft: no judge in {folder} yet (first use): training it, {recipe.steps} "
                f"steps (a few minutes on 2 CPU cores, seconds on a GPU)"
            )
        else:
            log(f"craft: {problem}; training the judge again")
        started = time.perf_counter()
        try:
            temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
        except OSError as error:
            raise JudgeError(f"cannot train the judge in {folder.parent}: {error}") from None
        try:
            record = train_judge(data_dir, temporary, recipe=recipe, device=device.type)
            _move_into_place(temporary, folder)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        log(
            f"craft: judge trained in {time.perf_counter() - started:.0f} s, test accuracy "
            f"{record['test_accuracy']:.2%}: {folder / JUDGE_FILE}"
        )
        return load_judge(folder, device=device, recipe=recipe)


def train_judge(
    data_dir: str | Path, out_dir: str | Path, *, recipe: JudgeRecipe = RECIPE, device: str = "cpu"
) -> dict[str, Any]:
    """Train the judge of `recipe` on `data_dir`'s MNIST into `out_dir` (`judge.safetensors`
    and `judge.json`); returns the record. Not atomic: `ensure_judge` trains into a temporary
    folder. Training's own lines go to stderr."""
    out_dir = Path(out_dir)
    configs = recipe.configs(data_dir, out_dir, device)
    task_cls = TASKS["classify"]
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # fit's run line: stdout may be JSON
        print(task_cls.prepare(configs))
        task = task_cls.open(configs, verified=True)
        setup = make_setup(configs, task, seed=recipe.seed)
        summary = fit(setup, out_dir)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt
    if summary["status"] != "finished" or not summary.get("checkpoint"):
        raise JudgeError(f"training the judge did not finish: {summary.get('note', summary)}")
    judge_file = out_dir / JUDGE_FILE
    os.replace(summary["checkpoint"], judge_file)
    shutil.rmtree(out_dir / "checkpoints")
    metrics = summary["metrics"]
    record = {
        "recipe": dataclasses.asdict(recipe),
        "identity": recipe.identity,
        "sha256": sha256_file(judge_file),
        "test_accuracy": metrics["test/accuracy"],
        "val_accuracy": metrics["val/accuracy"],
        "train_seconds": round(time.perf_counter() - started, 1),
        "device": device,
        "torch": torch.__version__,
    }
    text = json.dumps(record, indent=2)
    write_atomic(out_dir / RECORD_FILE, text.encode())
    return dict(json.loads(text))  # as load_judge reads it back (lists for tuples)


def load_judge(
    folder: str | Path, *, device: str | torch.device, recipe: JudgeRecipe = RECIPE
) -> Judge:
    """The judge in `folder`, checked against its record (recipe, sha256) and for being an
    MNIST CNN classifier; `JudgeError` says what does not fit."""
    folder, device = Path(folder), torch.device(device)
    path, record_path = folder / JUDGE_FILE, folder / RECORD_FILE
    if not path.is_file() or not record_path.is_file():
        missing = JUDGE_FILE if not path.is_file() else RECORD_FILE
        raise JudgeError(f"the judge in {folder} is damaged ({missing} is missing)")
    try:
        record = json.loads(record_path.read_text())
        expected = record["identity"], record["sha256"]
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise JudgeError(f"the judge in {folder} is damaged ({RECORD_FILE}: {error})") from None
    if expected[0] != recipe.identity:
        raise JudgeError(f"the judge in {folder} was trained from another recipe")
    if sha256_file(path) != expected[1]:
        raise JudgeError(f"the judge {path} is damaged (its sha256 differs from {RECORD_FILE})")
    try:
        loaded = load_for_inference(path)
        stored = loaded.meta["task_meta"]
        mean, std = float(stored["mean"]), float(stored["std"])
    except (CheckpointError, KeyError, TypeError, ValueError) as error:
        raise JudgeError(f"the judge {path} is damaged ({error})") from None
    model_cfg = loaded.model_cfg
    if loaded.spec.name != "cnn" or loaded.task_name != "classify" or model_cfg.num_classes != 10:
        raise JudgeError(f"{path} is not an MNIST CNN classifier")
    params = tree_map(lambda p: p.to(device), loaded.params)
    return Judge(path, model_cfg, params, mean, std, device, record)


def _remove_leftovers(folder: Path) -> None:
    """Temporary and replaced folders of this recipe that an interrupted process left behind
    (called under the recipe's lock, so no live process owns them)."""
    for pattern in (f".tmp-{folder.name}-*", f".old-{folder.name}-*"):
        for leftover in folder.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _move_into_place(temporary: Path, folder: Path) -> None:
    """Rename the trained folder into place, setting a damaged one aside first (a folder
    cannot be renamed over a non-empty one)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        os.replace(folder, old)
    os.replace(temporary, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
