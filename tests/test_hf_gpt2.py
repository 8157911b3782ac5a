"""Hugging Face GPT-2 in and out: logits equal transformers' at every position, the round
trip is bit-exact, greedy decoding picks the same tokens, and bad folders get clear errors.

Nothing comes from a hub: the models are random `GPT2LMHeadModel(GPT2Config(...))`, their
init scaled up (`initializer_range=0.5`) so greedy choices are not near-ties.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from craft import tree
from craft.checkpoint import CheckpointError
from craft.errors import ConfigError
from craft.generate import SamplingConfig, generate
from craft.interop import hf_gpt2
from craft.models import gpt

transformers = pytest.importorskip("transformers")


def hf_model(seed: int = 0, **overrides: object) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4, initializer_range=0.5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=96, eos_token_id=96,
    )  # fmt: skip
    settings.update(overrides)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()


def saved(model: transformers.GPT2LMHeadModel, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def hf_logits(model: transformers.GPT2LMHeadModel, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy-buffers-no-prefix"])
@pytest.mark.parametrize("shape", [(1, 1), (2, 17), (3, 48)])
def test_imported_logits_equal_transformers(
    tmp_path: Path, legacy: bool, shape: tuple[int, int]
) -> None:
    model = hf_model()
    folder = saved(model, tmp_path / "hf")
    if legacy:  # as files written before transformers 4.30: mask buffers, no prefix
        tensors = {
            k.removeprefix("transformer."): v
            for k, v in load_file(folder / "model.safetensors").items()
        }
        for layer in range(2):
            tensors[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(48, 48)).view(1, 1, 48, 48)
            tensors[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
        save_file(tensors, str(folder / "model.safetensors"))
    cfg, params = hf_gpt2.read_folder(folder)
    assert cfg.activation == "gelu_tanh" and cfg.tie_embeddings and cfg.block_size == 48
    tokens = torch.randint(0, 97, shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = gpt.apply(params, tokens, cfg)
    torch.testing.assert_close(ours, hf_logits(model, tokens), atol=1e-5, rtol=0)


def test_untied_head_and_exact_gelu_import(tmp_path: Path) -> None:
    model = hf_model(tie_word_embeddings=False, activation_function="gelu", n_inner=48)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    cfg, params = hf_gpt2.read_folder(saved(model, tmp_path / "hf"))
    assert not cfg.tie_embeddings and cfg.activation == "gelu" and cfg.mlp_hidden == 48
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            gpt.apply(params, tokens, cfg), hf_logits(model, tokens), atol=1e-5, rtol=0
        )


def test_export_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path: Path) -> None:
    model = hf_model(seed=3)
    folder = saved(model, tmp_path / "hf")
    original = load_file(folder / "model.safetensors")
    cfg, params = hf_gpt2.read_folder(folder)
    exported = hf_gpt2.to_external(params, cfg)
    shared = {k: v for k, v in original.items() if k in exported}
    assert set(shared) == set(exported)
    for name, value in exported.items():
        assert torch.equal(value, original[name]), name

    out = tmp_path / "out"
    out.mkdir()
    save_file(exported, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_gpt2.config_to_external(cfg)))
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out, local_files_only=True).eval()
    tokens = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        hf_logits(reloaded, tokens), hf_logits(model, tokens), atol=0, rtol=0
    )


def test_greedy_generation_picks_the_same_tokens(tmp_path: Path) -> None:
    model = hf_model(seed=5, n_positions=64)
    cfg, params = hf_gpt2.read_folder(saved(model, tmp_path / "hf"))
    prompt = [3, 14, 15, 92, 65]
    ours = list(
        generate("gpt", params, cfg, prompt, SamplingConfig(temperature=0, max_new_tokens=50))
    )
    theirs = model.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=50, min_new_tokens=50,
        pad_token_id=0, eos_token_id=None,
    )[0, len(prompt):].tolist()  # fmt: skip
    assert ours == theirs


def test_params_survive_the_craft_tree(tmp_path: Path) -> None:
    """Names follow Craft's GPT exactly, so an imported tree is a GPT params tree."""
    cfg, params = hf_gpt2.read_folder(saved(hf_model(), tmp_path / "hf"))
    with torch.device("meta"):
        like = gpt.init(cfg, seed=0)
    assert list(tree.to_dotted(params)) == list(tree.to_dotted(like))


def test_a_pickle_is_refused_with_a_way_out(tmp_path: Path) -> None:
    folder = saved(hf_model(), tmp_path / "hf")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError, match=r"pytorch_model.bin, a pickle, which Craft does not load"
    ):
        hf_gpt2.read_folder(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"activation_function": "swish"}, "activation_function 'swish' is not supported"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon = 1e-06 cannot be imported"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx = True"),
        ({"model_type": "llama"}, "model_type 'llama' is not gpt2"),
        ({"n_embd": 64}, "does not fit its config.json"),
        ({"n_embd": 0}, r"not a usable GPT-2 config \(ZeroDivisionError"),
        ({"n_embd": "abc"}, r"not a usable GPT-2 config \(ValueError"),
        ({"n_layer": None}, r"not a usable GPT-2 config \(TypeError"),
        ({"n_head": 7}, "not a usable GPT-2 config"),
        ({"vocab_size": -1}, "not a usable GPT-2 config"),
    ],
)
def test_config_json_it_cannot_express_is_refused(tmp_path: Path, edit: dict, message: str) -> None:
    folder = saved(hf_model(), tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config.update(edit)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises((ConfigError, CheckpointError), match=message):
        hf_gpt2.read_folder(folder)


def test_missing_and_foreign_tensors_are_named(tmp_path: Path) -> None:
    folder = saved(hf_model(), tmp_path / "hf")
    tensors = load_file(folder / "model.safetensors")
    missing = {k: v for k, v in tensors.items() if "h.1.mlp.c_fc.bias" not in k}
    save_file(missing, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"has no tensor 'h.1.mlp.c_fc.bias'"):
        hf_gpt2.read_folder(folder)
    save_file(
        {**tensors, "transformer.h.0.adapter.w": torch.zeros(2)}, str(folder / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match=r"holds tensors GPT-2 does not have: h.0.adapter.w"):
        hf_gpt2.read_folder(folder)
