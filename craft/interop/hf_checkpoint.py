"""`import_hf` and `export_hf`: a Hugging Face GPT-2 folder to a Craft checkpoint and back.

An imported model is an ordinary Craft checkpoint (step 0, the `lm` task, the tokenizer beside
it), so `generate`, `evaluate` and fine-tuning runs (`RunConfig.init_from`) use it as they are.
An exported folder is what `GPT2LMHeadModel.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from craft import checkpoint
from craft.checkpoint import CheckpointError
from craft.data.tokenizers import CharTokenizer, HFTokenizer, Tokenizer
from craft.errors import ConfigError
from craft.inference import load_for_inference
from craft.interop import hf_gpt2
from craft.models.gpt import GPTConfig
from craft.train.meta import CheckpointMeta
from craft.train.quantized_params import dequantized

TOKENIZER_FILE = "tokenizer.json"
EOS = "<|endoftext|>"


def import_folder(source: Path, output: Path) -> Path:
    """Write `output/step-00000000.safetensors` and `output/tokenizer.json` from a local GPT-2
    folder; returns the checkpoint's path."""
    source, output = Path(source), Path(output)
    cfg, params = hf_gpt2.read_folder(source)
    tokenizer = _read_tokenizer(source)
    if tokenizer.vocab_size > cfg.vocab():
        raise CheckpointError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} symbols, more than the "
            f"model's {cfg.vocab()}"
        )
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(output / TOKENIZER_FILE)
    record = CheckpointMeta.model_validate(
        {
            "step": 0,
            "task": "lm",
            "task_meta": {
                "tokenizer": TOKENIZER_FILE,
                "vocab_size": tokenizer.vocab_size,
                "window": cfg.block_size,
            },
            "model": "gpt",
            "model_config": cfg.model_dump(mode="json"),
            "configs": {"GPTConfig": cfg.model_dump(mode="json")},
            "versions": _versions(),
            "imported_from": {"format": "huggingface-gpt2", "folder": source.name},
        }
    )
    return checkpoint.save(output, {"params": params}, 0, record.as_dict())


def export_checkpoint(path: Path, output: Path) -> Path:
    """Write a Hugging Face GPT-2 folder (config.json, model.safetensors, the tokenizer) for a
    Craft GPT checkpoint; returns the folder."""
    loaded = load_for_inference(path)
    if loaded.model_name != "gpt":
        raise ConfigError(
            f"{path} holds a {loaded.model_name!r} model; only a GPT has a GPT-2 form"
        )
    cfg: GPTConfig = loaded.model_cfg
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    hf_tokenizer = _write_tokenizer(loaded.tokenizer(), path, output / TOKENIZER_FILE)
    # A quantized checkpoint exports its dequantized weights: GPT-2's files are float.
    tensors = hf_gpt2.to_external(dequantized(loaded.params), cfg)
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    eos = hf_tokenizer.eos_id
    config = hf_gpt2.config_to_external(cfg, eos_id=eos)
    (output / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.block_size,
        "clean_up_tokenization_spaces": False,
    }
    if eos is not None:
        tokenizer_config.update(eos_token=EOS, bos_token=EOS, unk_token=EOS)
    (output / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8"
    )
    return output


def _read_tokenizer(source: Path) -> HFTokenizer:
    if (source / "tokenizer.json").is_file():
        return HFTokenizer.load(source / "tokenizer.json")
    if (source / "vocab.json").is_file() and (source / "merges.txt").is_file():
        return HFTokenizer.from_vocab_merges(source / "vocab.json", source / "merges.txt")
    raise CheckpointError(
        f"{source} has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt"
    )


def _write_tokenizer(tokenizer: Tokenizer, path: Path, target: Path) -> HFTokenizer:
    """The checkpoint's tokenizer written in Hugging Face's form: as it is, or a char
    vocabulary as a word-level model over single characters, joined back without spaces."""
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.save(target)
    elif isinstance(tokenizer, CharTokenizer):
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as RawTokenizer

        vocab = {char: index for index, char in enumerate(tokenizer.chars)}
        raw = RawTokenizer(models.WordLevel(vocab, unk_token=None))
        raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        raw.decoder = decoders.Fuse()
        raw.save(str(target))
    else:
        raise ConfigError(
            f"{path}: its {tokenizer.kind} tokenizer has no Hugging Face form that Craft writes; "
            "export a model trained with a char or a Hugging Face (tokenizer.json) tokenizer"
        )
    return HFTokenizer.load(target)


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "craft": importlib.metadata.version("craft")}
