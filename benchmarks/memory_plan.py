"""The memory planner against hand-picked settings: does the planned step fit its budget, and
how fast is it next to the fastest setting that fits?

For each GPT (1M, 10M, 100M) and batch size, every setting a person could pick (each
micro-batch that divides the batch, activation checkpointing off and on) runs in a fresh
process: its peak (the live heap above the level before the state was built, glibc's
mallinfo2 as `benchmarks/train_step.py` measures it: params, gradients, AdamW state and the
step's activations) and its ms/step. For each budget, `craft.train.memory.plan_run` plans
(with its probe step) in a fresh process too; the table gives the plan, its measured peak,
the fastest hand-picked setting whose measured peak fits, and their throughput ratio.

Steps run eagerly (`TrainConfig.compile = False`): compiling regions costs 10-30 s per shape
and process on 2 cores, and every setting here is a new shape in a new process; the plan
itself is what a compiled run would get, plus the compile heap it budgets (24 MiB on a CPU).

Run: .venv/bin/python benchmarks/memory_plan.py [--only=1m|10m|100m]
Prints JSON lines and a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.train_step import PeakHeap  # noqa: E402
from benchmarks.workers import run_worker  # noqa: E402
from craft.models import gpt  # noqa: E402
from craft.models.spec import ModelSpec  # noqa: E402
from craft.nn import next_token_loss  # noqa: E402
from craft.optim import AdamW, Schedule  # noqa: E402
from craft.tasks.base import Task  # noqa: E402
from craft.train import init_state, make_train_step, memory  # noqa: E402
from craft.train.config import TrainConfig  # noqa: E402

# name: (layers, heads, width, vocab, sequence, batch sizes, timed steps, budgets in MiB)
MODELS: dict[str, tuple[int, int, int, int, int, tuple[int, ...], int, tuple[int, ...]]] = {
    "1m": (4, 4, 128, 76, 64, (12, 32), 10, (16, 24, 40, 80)),
    "10m-subword": (6, 6, 384, 2048, 64, (12,), 4, (180, 200, 240, 300)),
    "100m": (14, 12, 768, 76, 64, (4,), 2, (1400, 1540, 1600)),
}


class RandomTokens(Task):
    """Next-token prediction on random tokens: the planner's view of a task, no data files."""

    name = "random"
    inputs = "tokens"
    unit = "tokens"
    config_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, vocab: int, length: int):
        self.vocab, self.length = vocab, length

    @classmethod
    def prepare(cls, configs: dict[str, BaseModel]) -> str:
        return "random tokens"

    @classmethod
    def open(cls, configs: dict[str, BaseModel], *, verified: bool = False) -> Task:
        raise NotImplementedError

    @classmethod
    def for_checkpoint(cls, meta: dict[str, Any], directory: Path, data_dir: str | None) -> Task:
        raise NotImplementedError

    def train_batch(self, *, seed: int, step: int, size: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        x = torch.randint(0, self.vocab, (size, self.length + 1), generator=g)
        return {"inputs": x[:, :-1], "targets": x[:, 1:]}

    def eval_batches(self, split: str, size: int) -> Iterator[dict[str, torch.Tensor]]:
        return iter(())

    def fill_model_config(self, spec: ModelSpec, cfg: BaseModel) -> BaseModel:
        return cfg

    def example_shape(self, spec: ModelSpec, cfg: BaseModel) -> tuple[int, ...]:
        return (self.length,)

    def loss(self, apply: Any, params: Any, batch: Any, *, rng: torch.Tensor | None) -> Any:
        return next_token_loss(apply(params, batch["inputs"], rng=rng), batch["targets"])

    def summarize(self, sums: dict[str, float], split: str, *, whole: bool) -> dict[str, float]:
        return {}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}


def configs_for(name: str, batch: int, budget: float | None = None) -> dict[str, BaseModel]:
    layers, heads, width, vocab, length, *_ = MODELS[name]
    model = gpt.GPTConfig(
        vocab_size=vocab, block_size=length, n_layer=layers, n_head=heads, n_embd=width
    )
    train = TrainConfig(batch_size=batch, compile=False, memory_budget_mb=budget)
    return {"TrainConfig": train, "GPTConfig": model, "AdamW": AdamW(),
            "Schedule": Schedule(kind="constant", peak_lr=3e-4)}  # fmt: skip


def setting_worker(name: str, batch: int, micro: int, remat: bool) -> dict[str, Any]:
    """One hand-picked setting: the peak of building the state and a step, then ms/step."""
    layers, heads, width, vocab, length, _, steps, _ = MODELS[name]
    cfg = gpt.GPTConfig(vocab_size=vocab, block_size=length, n_layer=layers, n_head=heads,
                        n_embd=width, remat=remat)  # fmt: skip
    task = RandomTokens(vocab, length)
    batches = [task.train_batch(seed=0, step=i, size=batch) for i in range(2)]
    optimizer = AdamW()
    with PeakHeap() as heap:
        state = init_state(gpt.init(cfg, seed=0), optimizer)
        step = make_train_step(
            functools.partial(gpt.loss, cfg=cfg), optimizer,
            Schedule(kind="constant", peak_lr=3e-4), accum_steps=batch // micro, clip_norm=1.0,
            compile=False,
        )  # fmt: skip
        state, _ = step(state, batches[0])
    times = []
    for i in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batches[i % 2])
        float(metrics["loss"])
        times.append(time.perf_counter() - start)
    return {"micro": micro, "remat": remat, "peak_mib": round((heap.peak - heap.start) / 2**20, 1),
            "ms_per_step": round(min(times) * 1e3, 1)}  # fmt: skip


def plan_worker(name: str, batch: int, budget: float) -> dict[str, Any]:
    """The planner, as the launcher runs it (with its probe step)."""
    task = RandomTokens(MODELS[name][3], MODELS[name][4])
    try:
        _, plan = memory.plan_run(
            configs_for(name, batch, budget), task, device=torch.device("cpu")
        )
    except Exception as error:  # a refusal is a result too
        return {"refused": str(error)}
    assert plan is not None
    return {"micro": plan.micro_batch, "remat": plan.remat, "estimated_mib": plan.estimated_mb,
            "probe_mib": plan.measured_mb, "describe": plan.describe()}  # fmt: skip


def spawn(job: list[Any], threads: int) -> Any:
    return run_worker(__file__, job, ["--threads", str(threads)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, choices=list(MODELS))
    parser.add_argument(
        "--threads", type=int, default=2,
        help="CPU threads per worker (1 on a busy machine: 2 threads on 2 shared cores made "
        "OpenMP wait, and one step measured anywhere from 0.2 to 4 s)",
    )  # fmt: skip
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        job = json.loads(args.worker)
        worker = setting_worker if job[0] == "setting" else plan_worker
        print(json.dumps(worker(*job[1:])))
        return
    rows = []
    for name in [args.only] if args.only else list(MODELS):
        batches, budgets = MODELS[name][5], MODELS[name][7]
        for batch in batches:
            settings = {}
            for micro in [m for m in range(batch, 0, -1) if batch % m == 0]:
                for remat in (False, True):
                    found = spawn(["setting", name, batch, micro, remat], args.threads)
                    if found:
                        print(json.dumps({"suite": "memory_plan_setting", "model": name,
                                          "batch": batch, **found}), flush=True)  # fmt: skip
                        settings[(micro, remat)] = found
            for budget in budgets:
                plan = spawn(["plan", name, batch, budget], args.threads) or {
                    "refused": "the planner failed"
                }
                rows.append(summarize(name, batch, budget, plan, settings))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)


def summarize(
    name: str, batch: int, budget: float, plan: dict[str, Any],
    settings: dict[tuple[int, bool], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    fitting = [s for s in settings.values() if s["peak_mib"] <= budget]
    best = min(fitting, key=lambda s: s["ms_per_step"]) if fitting else None
    row: dict[str, Any] = {
        "suite": "memory_plan", "model": name, "batch": batch, "budget_mib": budget,
        "best": best, "torch": torch.__version__,
    }  # fmt: skip
    if "refused" in plan:
        row.update(refused=plan["refused"], fits=None, ratio=None)
        return row
    planned = settings.get((plan["micro"], bool(plan["remat"])))
    row.update(plan=plan, planned=planned)
    if planned:
        row["fits"] = planned["peak_mib"] <= budget
        if best:
            row["ratio"] = round(best["ms_per_step"] / planned["ms_per_step"], 3)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| model | batch | budget MiB | plan (micro x accum, remat) | estimate MiB | probe MiB "
        "| measured MiB | fits | ms/step | best hand-picked (fits) | best ms/step | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        head = f"| {row['model']} | {row['batch']} | {row['budget_mib']:g} "
        best = row.get("best")
        best_text = "none"
        if best:
            best_text = (
                f"{best['micro']} x {row['batch'] // best['micro']}, "
                f"{'on' if best['remat'] else 'off'} ({best['peak_mib']} MiB)"
            )
        if "refused" in row:
            print(head + f"| refused: {row['refused'][:90]}... | | | | | | {best_text} | | |")
            continue
        plan, planned = row["plan"], row.get("planned") or {}
        accum = row["batch"] // plan["micro"]
        print(
            head + f"| {plan['micro']} x {accum}, {'on' if plan['remat'] else 'off'} "
            f"| {plan['estimated_mib']} | {plan['probe_mib']} | {planned.get('peak_mib', '-')} "
            f"| {'yes' if row.get('fits') else 'NO'} | {planned.get('ms_per_step', '-')} "
            f"| {best_text} | {best['ms_per_step'] if best else '-'} | {row.get('ratio', '-')} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
