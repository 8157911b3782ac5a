"""Weight-only quantization: error bounds, int4 packing, `QuantizedWeight`, the checkpoint
format, and the `quantize` command with its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from craft import config, tree
from craft.checkpoint import CheckpointError, read_meta
from craft.compress.quantize import quantize_checkpoint
from craft.errors import ConfigError
from craft.inference import load_for_inference
from craft.nn.quant import (
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from craft.nn.quantized import QuantizedWeight
from craft.tasks import LanguageModeling
from craft.train.evaluate import evaluate
from craft.train.finetune import load_initial_params
from craft.train.loop import fit, make_setup
from tests.conftest import CliRunner, craft_configs
from tests.test_train import TEXT, TINY

WIDE = "GPTConfig.n_embd = 32\nGPTConfig.dropout = 0.0\n"
"""Width 32: every linear's inputs split into int4 groups of 32."""


def _weights(seed: int, rows: int, cols: int, scale: float) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * scale


shapes = st.tuples(st.integers(1, 40), st.integers(1, 4), st.integers(0, 2**16))
magnitudes = st.sampled_from([1e-3, 0.02, 1.0, 300.0])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, cols=st.integers(1, 70), scale=magnitudes)
def test_int8_error_stays_within_half_a_step_per_row(shape, cols: int, scale: float) -> None:
    rows, _, seed = shape
    w = _weights(seed, rows, cols, scale)
    values, scales = quantize_int8(w)
    assert values.dtype == torch.int8 and scales.shape == (rows,)
    error = (dequantize_int8(values, scales) - w).abs()
    assert (error <= scales[:, None] / 2 * (1 + 1e-5) + 1e-30).all()
    assert values.abs().max() <= 127


@settings(max_examples=60, deadline=None)
@given(shape=shapes, group=st.sampled_from([32, 64]), scale=magnitudes, shift=st.floats(-2, 2))
def test_int4_error_stays_within_half_a_step_per_group(shape, group, scale, shift) -> None:
    rows, groups, seed = shape
    w = _weights(seed, rows, groups * group, scale) + shift * scale
    packed, scales, lows = quantize_int4(w, group)
    assert packed.shape == (rows, groups * group // 2) and packed.dtype == torch.uint8
    assert scales.dtype == lows.dtype == torch.float16 and scales.shape == (rows, groups)
    step = scales.float().repeat_interleave(group, dim=1)
    error = (dequantize_int4(packed, scales, lows) - w).abs()
    assert (error <= step / 2 * (1 + 1e-3) + 1e-7 * w.abs()).all()


def test_int4_keeps_a_constant_group_exact_to_fp16() -> None:
    w = torch.full((2, 32), 0.25)
    assert torch.equal(dequantize_int4(*quantize_int4(w, 32)), w)


@given(
    rows=st.integers(0, 5),
    pairs=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_int4_packing_round_trips(rows: int, pairs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 16, (rows, 2 * pairs), generator=g, dtype=torch.uint8)
    packed = pack_int4(values)
    assert packed.shape == (rows, pairs)
    assert torch.equal(unpack_int4(packed), values)


def test_bad_inputs_to_the_quantizers_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="2-D weights"):
        quantize_int8(torch.ones(3))
    with pytest.raises(ValueError, match="do not split into groups of 32"):
        quantize_int4(torch.ones(2, 48), 32)
    with pytest.raises(ValueError, match="one of"):
        quantize_int4(torch.ones(2, 48), 16)
    with pytest.raises(ValueError, match="inf or nan"):
        quantize_int8(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.tensor([[16, 0]], dtype=torch.uint8))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [48, 65])  # 48: the int4 CPU kernel; 65: its fallback
def test_a_quantized_weight_computes_what_its_float_matrix_does(bits: int, rows: int) -> None:
    w = _weights(0, rows, 64, 0.02)
    q = QuantizedWeight(*(quantize_int8(w) if bits == 8 else quantize_int4(w, 32)))
    dense = q.dequantize()
    assert q.shape == (rows, 64) and q.dtype == torch.float32 and q.bits == bits
    x, bias = torch.randn(2, 3, 64), torch.randn(rows)
    torch.testing.assert_close(F.linear(x, q, bias), F.linear(x, dense, bias))
    ids = torch.tensor([[0, rows - 1], [5, 5]])
    assert torch.equal(F.embedding(ids, q), F.embedding(ids, dense))
    assert torch.equal(q[3:7], dense[3:7])
    assert torch.equal(q * 2, dense * 2)  # anything else sees the float matrix
    moved = q.to("cpu")
    assert isinstance(moved, QuantizedWeight) and torch.equal(moved.dequantize(), dense)
    assert q.stored_bytes() < w.numel() * 4 * (0.3 if bits == 8 else 0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a tiny trained checkpoint of width 32, its text file)."""
    folder = tmp_path_factory.mktemp("quantize")
    text = folder / "tiny.txt"
    text.write_text(TEXT)
    config.parse([], [TINY.format(source=text, steps=8) + WIDE])
    configs = craft_configs()
    LanguageModeling.prepare(configs)
    task = LanguageModeling.open(configs)
    summary = fit(make_setup(configs, task, seed=0), folder / "run")
    config.reset()
    return Path(summary["checkpoint"]), text


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, 32)])
def test_a_quantized_checkpoint_holds_integers_and_serves_the_model(
    trained: tuple[Path, Path], tmp_path: Path, bits: int, group: int | None
) -> None:
    source, text = trained
    path, report = quantize_checkpoint(source, tmp_path / "q", bits, group)
    assert (tmp_path / "q" / "tokenizer.json").is_file()  # the source's companion
    dtypes = {name: value.dtype for name, value in load_file(path).items()}
    record = read_meta(path)
    assert record["quantization"]["bits"] == bits and record["derived"]["by"] == "quantize"
    weights = record["quantization"]["weights"]
    assert "tok.embedding" in weights and "blocks.0.mlp.fc.w" in weights
    stored = dtypes["quantized.blocks.0.mlp.fc.w.values"]
    assert stored == (torch.int8 if bits == 8 else torch.uint8)
    assert not any(name.startswith("opt_state") for name in dtypes)
    # (a tiny model: its float norms and biases weigh more than in a real one)
    assert report["weight_bytes"] < report["weight_bytes_fp32"] * (0.3 if bits == 8 else 0.2)

    float_model, quantized = load_for_inference(source), load_for_inference(path)
    named = tree.to_dotted(quantized.params)
    assert all(isinstance(named[name], QuantizedWeight) for name in weights)
    assert not isinstance(named["blocks.0.ln1.scale"], QuantizedWeight)
    task = float_model.task(f"{text}.prepared")
    before = evaluate(task, float_model.loss_fn(task), float_model.params, "val", batch_size=8)
    after = evaluate(task, quantized.loss_fn(task), quantized.params, "val", batch_size=8)
    assert after["loss"] != before["loss"]
    assert abs(after["loss"] - before["loss"]) < (0.01 if bits == 8 else 0.05)


def test_quantized_checkpoints_cannot_seed_or_resume_training(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = trained
    path, _ = quantize_checkpoint(source, tmp_path / "q", 8, None)
    loaded = load_for_inference(source)
    with pytest.raises(ConfigError, match=r"is quantized .* start from the float checkpoint"):
        load_initial_params(path, loaded.spec, loaded.model_cfg)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_checkpoint(path, tmp_path / "again", 4, 32)
    with pytest.raises(ConfigError, match="already holds files"):
        quantize_checkpoint(source, tmp_path / "q", 8, None)


def test_a_quantization_record_that_does_not_fit_the_file_is_refused(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = trained
    path, _ = quantize_checkpoint(source, tmp_path / "q", 4, 32)
    tensors, record = load_file(path), read_meta(path)
    record["quantization"]["group_size"] = 64  # the file holds groups of 32
    save_file(tensors, str(tmp_path / "lying.safetensors"), {"craft": json.dumps(record)})
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        load_for_inference(tmp_path / "lying.safetensors")
    record["quantization"]["bits"] = 3
    save_file(tensors, str(tmp_path / "bad.safetensors"), {"craft": json.dumps(record)})
    with pytest.raises(CheckpointError, match="quantization record is malformed"):
        load_for_inference(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bits=3"], "--bits must be 8 (per output channel) or 4 (in groups), got 3"),
        (["--bits=4", "--group_size=16"], "--group_size must be 32 or 64, got 16"),
        (["--bits=8", "--group_size=32"], "--group_size applies to --bits=4"),
    ],
)
def test_bad_quantize_flags_name_the_problem(
    run_cli: CliRunner, tmp_path: Path, flags: list[str], message: str
) -> None:
    result = run_cli("quantize", "--checkpoint=missing.safetensors", "--output=q", *flags)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_cli_quantizes_evaluates_generates_and_refuses_to_resume(
    run_cli: CliRunner, trained: tuple[Path, Path], tmp_path: Path
) -> None:
    source, text = trained
    result = run_cli("quantize", f"--checkpoint={source}", "--output=q4", "--bits=4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bits"] == 4 and report["group_size"] == 32
    evaluated = run_cli("evaluate", "--checkpoint=q4", f"--data_dir={text}.prepared")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout.splitlines()[-1])["loss"] > 0
    generated = run_cli("generate", "--checkpoint=q4", "--prompt=a", "--max_new_tokens=5")
    assert generated.returncode == 0, generated.stderr
    compiled = run_cli("generate", "--checkpoint=q4", "--compile", "--max_new_tokens=5")
    assert compiled.returncode == 2
    assert "--compile does not take quantized weights: add --dequantize" in compiled.stderr
    unpacked = run_cli("generate", "--checkpoint=q4", "--prompt=a", "--max_new_tokens=5",
                       "--seed=3", "--dequantize")  # fmt: skip
    packed = run_cli("generate", "--checkpoint=q4", "--prompt=a", "--max_new_tokens=5", "--seed=3")
    assert unpacked.returncode == 0 and unpacked.stdout == packed.stdout  # the same model
    resumed = run_cli("run", "--resume=q4")
    assert resumed.returncode == 2
    assert "written by `craft.main quantize`" in resumed.stderr
    assert f"resume from {source}" in resumed.stderr
