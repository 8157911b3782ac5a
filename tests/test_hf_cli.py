"""`import_hf` and `export_hf` through the CLI: a local GPT-2 folder in, generate and evaluate
on it, and back out to a folder that transformers loads as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from craft import tree
from tests.conftest import CliRunner
from tests.test_train import TEXT, run_in_process

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PROMPT = "SPEAKER_3: words"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random GPT-2 and a byte-level BPE tokenizer trained on a small text, saved as
    `save_pretrained` writes them."""
    folder = tmp_path_factory.mktemp("hf")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, special_tokens=["<|endoftext|>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        initializer_range=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_import_generate_evaluate_export(
    run_cli: CliRunner, tmp_path: Path, hf_folder: Path
) -> None:
    imported = run_cli("import_hf", f"--source={hf_folder}", "--output=imported")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().endswith("imported/step-00000000.safetensors")

    model = transformers.GPT2LMHeadModel.from_pretrained(hf_folder, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_folder)
    prompt_ids = hf_tok.encode(PROMPT)
    new = model.generate(
        torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=50, min_new_tokens=50,
        pad_token_id=hf_tok.eos_token_id,
    )[0, len(prompt_ids):].tolist()  # fmt: skip
    generated = run_cli(
        "generate", "--checkpoint=imported", f"--prompt={PROMPT}", "--temperature=0",
        "--max_new_tokens=50",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == PROMPT + hf_tok.decode(new) + "\n"

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    prepared = run_cli(
        "prepare", f"--input={text}", "--type=subword", "--tokenizer=imported/tokenizer.json",
        "--output_dir=prepared",
    )  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    evaluated = run_cli("evaluate", "--checkpoint=imported", "--data_dir=prepared")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["loss"] > 0

    exported = run_cli("export_hf", "--checkpoint=imported", "--output=exported")
    assert exported.returncode == 0, exported.stderr
    again = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "exported", local_files_only=True
    ).eval()
    tokens = torch.tensor([hf_tok.encode(TEXT[:200])[:60]])
    with torch.no_grad():
        assert torch.equal(again(tokens).logits, model(tokens).logits)
    exported_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    for sample in (PROMPT, TEXT[:300], "unseen words: ünïcödé 🙂\n"):
        assert exported_tok.encode(sample) == hf_tok.encode(sample)
        assert exported_tok.decode(hf_tok.encode(sample)) == hf_tok.decode(hf_tok.encode(sample))


def test_legacy_vocab_and_merges_import(
    run_cli: CliRunner, tmp_path: Path, hf_folder: Path
) -> None:
    legacy = tmp_path / "legacy"
    shutil.copytree(hf_folder, legacy)
    raw = tokenizers.Tokenizer.from_file(str(legacy / "tokenizer.json"))
    raw.model.save(str(legacy))  # writes vocab.json and merges.txt
    (legacy / "tokenizer.json").unlink()
    imported = run_cli("import_hf", f"--source={legacy}", "--output=imported")
    assert imported.returncode == 0, imported.stderr
    generated = run_cli(
        "generate", "--checkpoint=imported", f"--prompt={PROMPT}", "--temperature=0",
        "--max_new_tokens=5",
    )  # fmt: skip
    assert generated.returncode == 0 and generated.stdout.startswith(PROMPT), generated.stderr


def test_a_char_model_exports_with_its_tokenizer(run_cli: CliRunner, tmp_path: Path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT)
    run_in_process(tmp_path / "run", text, steps=4)
    exported = run_cli("export_hf", f"--checkpoint={tmp_path / 'run'}", "--output=exported")
    assert exported.returncode == 0, exported.stderr
    from craft.inference import load_for_inference
    from craft.models import gpt

    loaded = load_for_inference(tmp_path / "run/checkpoints/step-00000004.safetensors")
    ours = loaded.tokenizer()
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
    sample = TEXT[:120]
    assert theirs.encode(sample) == ours.encode(sample).tolist()
    assert theirs.decode(theirs.encode(sample)) == sample
    model = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "exported", local_files_only=True
    ).eval()
    tokens = torch.tensor([ours.encode(sample)[:16].tolist()])
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens).logits,
            gpt.apply(loaded.params, tokens, loaded.model_cfg),
            atol=1e-5,
            rtol=0,
        )


def test_import_errors_are_clear(run_cli: CliRunner, tmp_path: Path, hf_folder: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(hf_folder, bare)
    (bare / "tokenizer.json").unlink()
    result = run_cli("import_hf", f"--source={bare}", "--output=out")
    assert result.returncode == 1
    assert (
        "has no tokenizer: expected tokenizer.json, or vocab.json and merges.txt" in result.stderr
    )
    missing = run_cli("import_hf", f"--source={tmp_path / 'nowhere'}", "--output=out")
    assert missing.returncode == 1 and "has no config.json" in missing.stderr
    flagless = run_cli("import_hf", "--source", "--output=out")
    assert flagless.returncode == 2 and "--source needs a value" in flagless.stderr


def test_the_finetune_path_import_lora_generate_export(
    run_cli: CliRunner, tmp_path: Path, hf_folder: Path
) -> None:
    """gin/finetune_got.gin's path on a tiny GPT-2: import, LoRA fine-tune (the base frozen),
    generate, and export with the adapters merged into the weights transformers loads."""
    assert run_cli("import_hf", f"--source={hf_folder}", "--output=models/tiny").returncode == 0
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    tiny = [
        "--gin.RunConfig.init_from='models/tiny'", f"--gin.DataConfig.source='{text}'",
        "--gin.DataConfig.tokenizer_file='models/tiny/tokenizer.json'",
        "--gin.DataConfig.window=32",
        "--gin.GPTConfig.n_layer=2", "--gin.GPTConfig.n_head=4", "--gin.GPTConfig.n_embd=32",
        "--gin.GPTConfig.block_size=64", "--gin.GPTConfig.dropout=0.0", "--gin.STEPS=6",
        "--gin.TrainConfig.batch_size=4", "--gin.TrainConfig.eval_every=3",
        "--gin.TrainConfig.checkpoint_every=3", "--gin.TrainConfig.sample_every=0",
        "--gin.TrainConfig.compile=False", "--gin.Schedule.warmup_steps=2",
        "--gin.MetricsConfig.wandb='disabled'", "--gin.MetricsConfig.progress_bar=False",
    ]  # fmt: skip
    trained = run_cli("--gin_file=gin/finetune_got.gin", *tiny)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "status: finished after 6 steps" in trained.stdout
    [run_dir] = list((tmp_path / "outputs/experiments/finetune_got").glob("*/*"))
    assert "RunConfig.init_from = 'models/tiny'" in (run_dir / "config.gin").read_text()

    generated = run_cli("generate", f"--checkpoint={run_dir}", f"--prompt={PROMPT}",
                        "--max_new_tokens=5")  # fmt: skip
    assert generated.returncode == 0 and generated.stdout.startswith(PROMPT), generated.stderr
    exported = run_cli("export_hf", f"--checkpoint={run_dir}", "--output=exported")
    assert exported.returncode == 0, exported.stderr

    from craft.inference import load_for_inference
    from craft.models import gpt

    merged = load_for_inference(run_dir / "checkpoints/step-00000006.safetensors")
    base = load_for_inference(tmp_path / "models/tiny/step-00000000.safetensors")
    before = tree.to_dotted(base.params)
    changed = [k for k, v in tree.to_dotted(merged.params).items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith(".w") for k in changed)  # only adapted weights moved
    model = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "exported", local_files_only=True
    ).eval()
    tokens = torch.tensor([merged.tokenizer().encode(TEXT[:100])[:20].tolist()])
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens).logits, gpt.apply(merged.params, tokens, merged.model_cfg),
            atol=1e-5, rtol=0,
        )  # fmt: skip
