"""On a GPU: the compiled paths (bf16, CUDA graphs, KV-cache decoding) and a whole CLI run.

Skipped where torch sees no CUDA device (the CI machine); `benchmarks/gpu_checks.sh` runs them
on a lent GPU.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from craft import tree
from craft.generate import SamplingConfig, generate, generate_recompute
from craft.models import gpt
from craft.optim import AdamW, Schedule
from craft.train import init_state, make_train_step, to_device
from tests.conftest import REPO
from tests.test_generate import small_gpt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CFG = gpt.GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64)


def batches(n: int, b: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(0, CFG.vocab(), (b, CFG.block_size + 1), generator=g)
        out.append({"inputs": x[:, :-1].cuda(), "targets": x[:, 1:].cuda()})
    return out


def train(steps: int, **options: object) -> tuple[object, list[float]]:
    optimizer = AdamW()
    state = to_device(init_state(gpt.init(CFG, seed=0), optimizer), "cuda")
    step = make_train_step(
        functools.partial(gpt.loss, cfg=CFG), optimizer, Schedule(kind="constant", peak_lr=3e-3),
        clip_norm=1.0, **options,  # type: ignore[arg-type]
    )  # fmt: skip
    data, losses = batches(4), []
    for i in range(steps):
        state, metrics = step(state, data[i % 4])
        losses.append(metrics["loss"].item())
    return state, losses


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_bf16_step_follows_the_eager_one(mode: str) -> None:
    _, eager = train(20, precision="bf16", compile=False)
    _, compiled = train(20, precision="bf16", compile=True, compile_mode=mode)
    assert compiled[-1] < compiled[0] - 0.5  # it learns the 4 batches
    # bf16 rounds differently in fused kernels: the curves agree to a few percent.
    assert compiled == pytest.approx(eager, rel=3e-2)


def test_fp32_cuda_graph_step_equals_eager_step() -> None:
    eager_state, eager = train(6, compile=False)
    graph_state, graphs = train(6, compile=True, compile_mode="reduce-overhead")
    assert graphs == pytest.approx(eager, rel=1e-4)
    for a, b in zip(tree.leaves(graph_state.params), tree.leaves(eager_state.params), strict=True):  # type: ignore[attr-defined]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compile", [False, True, "reduce-overhead"])
def test_cached_decoding_on_the_gpu_equals_recomputation(compile: bool | str) -> None:
    # The CPU tests' model: weights scaled so that greedy output varies (a fresh init repeats
    # one token); 40 tokens through its 16-token context refill the cache three times.
    cfg, params = small_gpt("rotary")
    params = tree.tree_map(lambda p: p.cuda(), params)
    greedy = SamplingConfig(temperature=0, max_new_tokens=40)
    prompt = [3, 1, 4, 1, 5]
    cached = list(generate("gpt", params, cfg, prompt, greedy, device="cuda", compile=compile))
    recomputed = list(generate_recompute(params, cfg, prompt, greedy, device="cuda"))
    assert len(set(cached)) >= 5
    assert cached == recomputed


def test_a_cli_run_on_the_gpu(tmp_path: Path) -> None:
    """bf16 + compile on CUDA through the CLI: it trains, reports MFU, and checkpoints."""
    text = tmp_path / "tiny.txt"
    text.write_text(
        "".join(f"SPEAKER_{i % 5}: words of line {i}, said plainly.\n" for i in range(800))
    )
    (tmp_path / "tiny.gin").write_text(
        f"RunConfig.name = 'tiny'\nDataConfig.source = '{text}'\nDataConfig.block_size = 64\n"
        "GPTConfig.block_size = 64\nGPTConfig.n_layer = 2\nGPTConfig.n_head = 2\n"
        "GPTConfig.n_embd = 64\nTrainConfig.steps = 60\nTrainConfig.batch_size = 16\n"
        "TrainConfig.device = 'cuda'\nTrainConfig.precision = 'bf16'\n"
        "TrainConfig.eval_every = 30\nTrainConfig.sample_every = 0\n"
        "MetricsConfig.wandb = 'disabled'\nMetricsConfig.progress_bar = False\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "craft.main", "--gin_file=tiny.gin"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = list((tmp_path / "outputs/experiments/tiny").glob("*/*"))
    lines = (run_dir / "logs/metrics.jsonl").read_text().splitlines()
    steps = [row for row in map(json.loads, lines) if row["kind"] == "train"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert any(row.get("mfu") for row in steps)  # the GPU's peak is known
    assert (run_dir / "checkpoints/step-00000060.safetensors").exists()
