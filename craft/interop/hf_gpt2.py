"""Hugging Face GPT-2 in and out: a state-dict adapter between `GPT2LMHeadModel` files and
Craft's GPT.

GPT-2's details, each checked: Conv1D weights are stored `[in, out]` (Craft's linears are
`[out, in]`), `c_attn` holds q, k and v side by side (as Craft's `qkv` does), the MLP uses the
tanh approximation of GELU ("gelu_new"), layer norms use eps 1e-5, the head is tied to `wte` and
left out of saved files, and files written before transformers 4.30 carry `h.N.attn.bias` (a
causal mask) and `h.N.attn.masked_bias` buffers, with or without the `transformer.` prefix.
Only safetensors files are read: a pickle (`pytorch_model.bin`) can run code when loaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from craft import tree
from craft.checkpoint import CheckpointError
from craft.errors import ConfigError
from craft.models.gpt import GPTConfig
from craft.tree import Params

ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}
"""GPT-2's `activation_function` names -> `GPTConfig.activation`."""

_LEGACY_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# (Craft name, Hugging Face name, transposed: a Conv1D weight stored [in, out])
_BLOCK = (
    ("ln1.scale", "ln_1.weight", False),
    ("ln1.bias", "ln_1.bias", False),
    ("attn.qkv.w", "attn.c_attn.weight", True),
    ("attn.qkv.b", "attn.c_attn.bias", False),
    ("attn.proj.w", "attn.c_proj.weight", True),
    ("attn.proj.b", "attn.c_proj.bias", False),
    ("ln2.scale", "ln_2.weight", False),
    ("ln2.bias", "ln_2.bias", False),
    ("mlp.fc.w", "mlp.c_fc.weight", True),
    ("mlp.fc.b", "mlp.c_fc.bias", False),
    ("mlp.proj.w", "mlp.c_proj.weight", True),
    ("mlp.proj.b", "mlp.c_proj.bias", False),
)
_TOP = (
    ("tok.embedding", "wte.weight"),
    ("pos.embedding", "wpe.weight"),
    ("ln_f.scale", "ln_f.weight"),
    ("ln_f.bias", "ln_f.bias"),
)


def config_from(hf: Mapping[str, Any], source: str = "config.json") -> GPTConfig:
    """The `GPTConfig` of a GPT-2 `config.json`; what Craft's GPT cannot express is refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"{source}: model_type {hf.get('model_type')!r} is not gpt2")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"{source}: activation_function {activation!r} is not supported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    unsupported = {
        "layer_norm_epsilon": (1e-5, "Craft's GPT normalises with eps 1e-5"),
        "scale_attn_weights": (True, "Craft's attention always scales by 1/sqrt(head size)"),
        "scale_attn_by_inverse_layer_idx": (False, "Craft's attention does not"),
        "add_cross_attention": (False, "Craft's GPT is decoder-only"),
    }
    for key, (expected, why) in unsupported.items():
        if (
            key in hf
            and hf[key] != expected
            and not (isinstance(expected, float) and math.isclose(float(hf[key]), expected))
        ):
            raise ConfigError(f"{source}: {key} = {hf[key]!r} cannot be imported ({why})")
    try:
        width = int(hf.get("n_embd", 768))
        inner = int(hf.get("n_inner") or 4 * width)
        cfg = GPTConfig(
            vocab_size=int(hf.get("vocab_size", 50257)),
            block_size=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
            n_layer=int(hf.get("n_layer", 12)),
            n_head=int(hf.get("n_head", 12)),
            n_embd=width,
            mlp_ratio=inner / width,
            dropout=max(float(hf.get(k, 0.1)) for k in ("resid_pdrop", "embd_pdrop")),
            bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            positions="learned",
            norm="layer",
            activation=ACTIVATIONS[activation],
        )
    except (TypeError, ValueError, ArithmeticError) as error:  # ValidationError is a ValueError
        reason = str(error).strip().splitlines()
        raise ConfigError(
            f"{source}: not a usable GPT-2 config ({type(error).__name__}: "
            f"{' '.join(line.strip() for line in reason[:3])})"
        ) from None
    if cfg.mlp_hidden != inner:  # GPTConfig keeps the MLP width as a ratio of n_embd
        raise ConfigError(f"{source}: n_inner = {inner} is not expressible as a ratio of {width}")
    return cfg


def params_from(tensors: Mapping[str, torch.Tensor], cfg: GPTConfig, source: str) -> Params:
    """Craft params from a GPT-2 state dict, every name and shape checked; legacy mask buffers
    and the `transformer.` prefix may be present or absent."""
    plain = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    dotted: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(hf_name: str, transposed: bool = False) -> torch.Tensor:
        if hf_name not in plain:
            raise CheckpointError(f"{source} has no tensor {hf_name!r} (GPT-2 needs it)")
        used.add(hf_name)
        value = plain[hf_name].to(torch.float32)
        return (value.t() if transposed else value).contiguous()

    for craft_name, hf_name in _TOP:
        dotted[craft_name] = take(hf_name)
    for layer in range(cfg.n_layer):
        for craft_name, hf_name, transposed in _BLOCK:
            dotted[f"blocks.{layer}.{craft_name}"] = take(f"h.{layer}.{hf_name}", transposed)
    if not cfg.tie_embeddings:
        dotted["head.w"] = take("lm_head.weight")
    elif "lm_head.weight" in plain:
        used.add("lm_head.weight")
        if not torch.equal(plain["lm_head.weight"], plain["wte.weight"]):
            raise CheckpointError(
                f"{source}: lm_head.weight differs from wte.weight, but config.json says the "
                "embeddings are tied (tie_word_embeddings)"
            )
    unknown = sorted(n for n in plain if n not in used and not _LEGACY_BUFFER.fullmatch(n))
    if unknown:
        raise CheckpointError(
            f"{source} holds tensors GPT-2 does not have: {', '.join(unknown[:8])}"
            + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        )
    like = _check_shapes(dotted, cfg, source)
    return tree.from_dotted(dotted, like=like)


def to_external(params: Params, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """A GPT-2 state dict (`transformer.`-prefixed, head left out when tied) from Craft params."""
    if cfg.positions != "learned" or cfg.norm != "layer" or not cfg.bias:
        raise ConfigError(
            "only a GPT with learned positions, layer norm and biases has a GPT-2 form "
            f"(this one: positions={cfg.positions}, norm={cfg.norm}, bias={cfg.bias})"
        )
    if cfg.mlp_hidden != cfg.mlp_ratio * cfg.n_embd:
        raise ConfigError(f"mlp_ratio {cfg.mlp_ratio} does not give a whole MLP width")
    if cfg.attn_width != cfg.n_embd:
        raise ConfigError(
            f"GPT-2's heads span n_embd: this GPT's {cfg.n_head} heads of {cfg.head_dim} "
            f"(head_size, after structured pruning) span {cfg.attn_width}, not {cfg.n_embd}"
        )
    dotted = tree.to_dotted(params)
    out = {f"transformer.{hf}": dotted[craft].detach().contiguous() for craft, hf in _TOP}
    for layer in range(cfg.n_layer):
        for craft_name, hf_name, transposed in _BLOCK:
            value = dotted[f"blocks.{layer}.{craft_name}"].detach()
            out[f"transformer.h.{layer}.{hf_name}"] = (
                value.t() if transposed else value
            ).contiguous()
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = dotted["head.w"].detach().contiguous()
    return out


def config_to_external(cfg: GPTConfig, *, eos_id: int | None = None) -> dict[str, Any]:
    """GPT-2's `config.json` for `cfg` (what `GPT2Config` reads)."""
    names = {craft: hf for hf, craft in ACTIVATIONS.items() if hf != "gelu_pytorch_tanh"}
    config: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab(),
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.mlp_hidden,
        "activation_function": names[cfg.activation],
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,  # Craft drops out on the residual branches only
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
    }
    if eos_id is not None:
        config.update(bos_token_id=eos_id, eos_token_id=eos_id)
    return config


def read_folder(source: Path) -> tuple[GPTConfig, Params]:
    """The config and params of a local Hugging Face GPT-2 folder (safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = Path(source)
    config_path = source / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{source} has no config.json: not a Hugging Face model folder")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{config_path} is not readable JSON: {error}") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_path} is not a JSON object")
    cfg = config_from(hf_config, str(config_path))
    weights = source / "model.safetensors"
    if not weights.is_file():
        pickles = [p.name for p in source.glob("*.bin")] + [p.name for p in source.glob("*.pt")]
        if pickles:
            raise CheckpointError(
                f"{source} holds {', '.join(pickles)}, a pickle, which Craft does not load (it "
                "can run code). Convert it to model.safetensors once, on a machine where you "
                "trust the file, e.g. with transformers: GPT2LMHeadModel.from_pretrained(DIR)"
                ".save_pretrained(DIR, safe_serialization=True)"
            )
        raise CheckpointError(f"{source} has no model.safetensors")
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {error}") from None
    return cfg, params_from(tensors, cfg, str(weights))


def _check_shapes(dotted: Mapping[str, torch.Tensor], cfg: GPTConfig, source: str) -> Params:
    """Compare with Craft's GPT built on the meta device (no memory); returns that tree."""
    from craft.models import gpt  # the model floor, imported where it is used

    with torch.device("meta"):
        like = gpt.init(cfg, seed=0)
    wrong = [
        f"{name}: {list(dotted[name].shape)}, config.json implies {list(want.shape)}"
        for name, want in tree.to_dotted(like).items()
        if name in dotted and tuple(dotted[name].shape) != tuple(want.shape)
    ]
    if wrong:
        raise CheckpointError(f"{source} does not fit its config.json: " + "; ".join(wrong[:6]))
    return like
