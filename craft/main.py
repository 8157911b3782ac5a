"""The Craft command line: `python -m craft.main [command] [--gin_file=...] [--flags]`.

Without a command it runs what the gin files configure. Gin flags (`--gin_file`, `--gin_param`,
`--gin.Name.field=value`) may appear anywhere; they are taken out before fire reads the rest.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
from pydantic import BaseModel

from craft import config
from craft.checkpoint import list_checkpoints
from craft.checkpoint import resolve as resolve_checkpoint
from craft.config import ModelT
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import PreparedData, default_prepared_dir, open_split, prepare
from craft.data.sources import SOURCES, resolve_source
from craft.data.sources.got import fetch_got
from craft.data.text import read_text
from craft.data.tokenizers import SentencePieceTokenizer
from craft.distributed import barrier, world_from_env
from craft.distributed import init as init_distributed
from craft.errors import ConfigError, CraftError
from craft.generate import SamplingConfig, generate_text
from craft.inference import load_for_inference
from craft.metrics import MetricsConfig, MetricsLogger, plot_run
from craft.models import CONFIGS, MODELS
from craft.runs import RunConfig, create_run_dir, write_effective_config
from craft.samples import SampleHook
from craft.train.config import TrainConfig
from craft.train.evaluate import evaluate
from craft.train.hooks import Hook
from craft.train.loop import fit, make_setup


class Commands:
    """Craft: build, train and evaluate functional PyTorch models.

    Every command accepts --gin_file=FILE (repeatable, later files win), --gin_param="Name.field
    = value" (repeatable) and --gin.Name.field=value. Without a command, runs what the gin files
    configure.
    """

    def __init__(self, gin_files: Sequence[str], gin_params: Sequence[str]):
        self._gin_files = list(gin_files)
        self._gin_params = list(gin_params)
        self.exit_code = 0

    def run(self, resume: str | None = None) -> None:
        """Train what the gin files configure: data, model, checkpoints, metrics, samples.

        --resume=latest continues this experiment's newest run; --resume=PATH continues from a
        checkpoint file or run folder. The run goes on in the folder it came from.
        """
        configs = self._configs()
        run_cfg, data_cfg, tok_cfg = (
            _get(configs, RunConfig), _get(configs, DataConfig), _get(configs, TokenizerConfig)
        )  # fmt: skip
        world = world_from_env()
        checkpoint_path = _resume_from(resume, run_cfg) if resume else None
        init_distributed(world, timeout_s=_get(configs, TrainConfig).dist_timeout_s)
        # Rank 0 fetches and prepares the data; the others then find it cached.
        prepared = _prepare(data_cfg, tok_cfg) if world.main else None
        barrier()
        prepared = prepared or _prepare(data_cfg, tok_cfg)
        setup = make_setup(configs, prepared, seed=run_cfg.seed)
        if checkpoint_path is not None:
            run_dir = checkpoint_path.parent.parent
        elif world.main:
            run_dir = create_run_dir(run_cfg)
        else:  # other ranks write nothing: a name for messages only
            run_dir = Path(run_cfg.output_dir) / run_cfg.name / f"rank-{world.rank}"
        hooks: list[Hook] = []
        if world.main:
            _report(prepared)
            write_effective_config(run_dir, configs.values())
            metrics = MetricsLogger(_get(configs, MetricsConfig))
            hooks = [SampleHook(metrics), metrics]  # samples reach W&B before it closes
        summary = fit(setup, run_dir, hooks=hooks, resume=checkpoint_path, world=world)
        if world.main:
            _print_summary(summary)
        if summary["status"] == "interrupted":
            self.exit_code = 130  # like a shell's Ctrl-C, after a clean save

    train = run

    def evaluate(self, checkpoint: str, split: str = "val") -> None:
        """Loss, perplexity and bits per token (and per character) over a whole split."""
        path = resolve_checkpoint(checkpoint)
        loaded = load_for_inference(path)
        configs = loaded.meta["configs"]
        data_cfg = DataConfig.model_validate(configs["DataConfig"])
        tok_cfg = TokenizerConfig.model_validate(configs["TokenizerConfig"])
        directory = default_prepared_dir(data_cfg, tok_cfg)
        tokens = open_split(directory, split)
        results = evaluate(
            loaded.loss_fn, loaded.params, tokens, block_size=data_cfg.block_size,
            batch_size=64, chars=len(loaded.tokenizer.decode(tokens)),
        )  # fmt: skip
        print(json.dumps({"checkpoint": str(path), "split": split, **results}))

    def generate(
        self,
        checkpoint: str,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float = 1.0,
        seed: int = 0,
        num_samples: int = 1,
        compile: bool = False,
    ) -> None:
        """Stream text from a checkpoint (KV-cache decoding for the GPT)."""
        sampling = SamplingConfig.checked(
            temperature=temperature, top_k=top_k, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed,
        )  # fmt: skip
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        prompt = str(prompt)  # fire reads --prompt=42 as a number
        loaded = load_for_inference(resolve_checkpoint(checkpoint))
        loaded.tokenizer.encode(prompt)  # a prompt the vocabulary lacks fails before any output
        for index in range(num_samples):
            if num_samples > 1:
                print(f"--- sample {index + 1} ---")
            sys.stdout.write(prompt)
            generate_text(
                loaded.model_name, loaded.params, loaded.model_cfg, loaded.tokenizer, prompt,
                sampling.model_copy(update={"seed": seed + index}), stream=sys.stdout,
                compile=compile,
            )  # fmt: skip
            print()

    def plot(self, run: str) -> None:
        """Write loss.png (train and val loss, lr) for a run folder from its metrics.jsonl."""
        print(plot_run(Path(run)))

    def show_config(self) -> None:
        """Print the effective configuration as gin text and the model size; runs nothing."""
        configs = self._configs()
        print(config.to_gin(configs.values()), end="")
        name = _get(configs, TrainConfig).model
        model = configs[CONFIGS[name].__name__]
        print(_model_size(name, model, _get(configs, DataConfig), _get(configs, TokenizerConfig)))

    def fetch(self, source: str = "got", data_dir: str | None = None) -> None:
        """Download a named corpus (cached). Sources: got (Game of Thrones season 1 scripts)."""
        if source not in SOURCES:
            raise ConfigError(f"unknown source '{source}': expected one of {', '.join(SOURCES)}")
        data_cfg = config.build(DataConfig, {"data_dir": data_dir})
        scripts = fetch_got(Path(data_cfg.data_dir))
        state = "downloaded" if scripts.downloaded else "cached"
        size, episodes = scripts.season.stat().st_size, len(scripts.episodes)
        print(f"{source}: {scripts.season} ({size:,} bytes, {episodes} episodes, {state})")

    def prepare(
        self,
        input: str | None = None,
        output_dir: str | None = None,
        type: str | None = None,
        tokenizer: str | None = None,
        split_ratios: tuple[float, float, float] | None = None,
        vocab_size: int | None = None,
        model_type: str | None = None,
        block_size: int | None = None,
        errors: str | None = None,
    ) -> None:
        """Tokenize a text into train.bin, val.bin, test.bin and meta.json (cached).

        --input: a text file or a source name (got); --type: char or subword; --tokenizer: an
        existing tokenizer file; --split_ratios=0.9,0.05,0.05; --errors=strict|replace.
        """
        data_cfg = config.build(
            DataConfig,
            {
                "source": input,
                "prepared_dir": output_dir,
                "tokenizer": type,
                "tokenizer_file": tokenizer,
                "split_ratios": split_ratios,
                "block_size": block_size,
                "errors": errors,
            },
            flag_names={
                "source": "input",
                "prepared_dir": "output_dir",
                "tokenizer": "type",
                "tokenizer_file": "tokenizer",
            },
        )
        tok_cfg = config.build(
            TokenizerConfig, {"vocab_size": vocab_size, "model_type": model_type}
        )
        _report(_prepare(data_cfg, tok_cfg))

    def train_tokenizer(
        self,
        input: str,
        output: str,
        vocab_size: int | None = None,
        model_type: str | None = None,
        character_coverage: float | None = None,
        errors: str = "strict",
    ) -> None:
        """Train a SentencePiece model on a text file and save it to --output (a .model file)."""
        tok_cfg = config.build(
            TokenizerConfig,
            {
                "vocab_size": vocab_size,
                "model_type": model_type,
                "character_coverage": character_coverage,
            },
        )
        if errors not in ("strict", "replace"):
            raise ConfigError(f"--errors must be strict or replace, got {errors!r}")
        text, _ = read_text(Path(input), errors)  # type: ignore[arg-type]
        tok = SentencePieceTokenizer.train(
            text,
            vocab_size=tok_cfg.vocab_size,
            model_type=tok_cfg.model_type,
            character_coverage=tok_cfg.character_coverage,
        )
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(path)
        print(f"{path}: {tok_cfg.model_type} SentencePiece, {tok.vocab_size} pieces")

    def _configs(self) -> dict[str, BaseModel]:
        return config.build_all()


def _model_size(name: str, model: BaseModel, data: DataConfig, tok: TokenizerConfig) -> str:
    """`# GPT: N parameters` (or RNN: the model TrainConfig picks), with the vocab from the
    config or an already prepared dataset."""
    param_count = MODELS[name].param_count
    vocab = getattr(model, "vocab_size", None)
    prepared = default_prepared_dir(data, tok) / "meta.json"
    if vocab is None and prepared.is_file():
        vocab = int(json.loads(prepared.read_text())["vocab_size"])
    if vocab is not None:
        count = param_count(model.model_copy(update={"vocab_size": vocab}))
        return f"# {name.upper()}: {count:,} parameters (vocab {vocab:,})"
    one = param_count(model.model_copy(update={"vocab_size": 1}))
    per_entry = param_count(model.model_copy(update={"vocab_size": 2})) - one
    return (
        f"# {name.upper()}: {one - per_entry:,} parameters + {per_entry:,} per vocabulary entry "
        "(the vocab comes from the dataset once it is prepared)"
    )


def _prepare(data_cfg: DataConfig, tok_cfg: TokenizerConfig) -> PreparedData:
    return prepare(
        resolve_source(data_cfg), default_prepared_dir(data_cfg, tok_cfg), data_cfg, tok_cfg
    )


def _get(configs: dict[str, BaseModel], kind: type[ModelT]) -> ModelT:
    found = configs[kind.__name__]
    assert isinstance(found, kind)
    return found


def _resume_from(spec: str, run_cfg: RunConfig) -> Path:
    """The checkpoint to resume: `latest` is the newest in this experiment's newest run."""
    if spec != "latest":
        return resolve_checkpoint(spec)
    runs = sorted((Path(run_cfg.output_dir) / run_cfg.name).glob("*/*/checkpoints"))
    for checkpoints in reversed(runs):
        if list_checkpoints(checkpoints):
            return resolve_checkpoint("latest", checkpoints)
    raise ConfigError(
        f"--resume=latest: no checkpoint under {Path(run_cfg.output_dir) / run_cfg.name}"
    )


def _print_summary(summary: dict[str, Any]) -> None:
    lines = [
        f"status: {summary['status']} after {summary['steps']} steps "
        f"({summary['tokens']:,} tokens in {summary['seconds']:.1f} s)",
    ]
    if summary.get("val_loss") is not None:
        lines.append(
            f"val loss {summary['val_loss']:.4f}, perplexity {summary['val_perplexity']:.2f}"
            + (
                f", bits/char {summary['val_bits_per_char']:.3f}"
                if "val_bits_per_char" in summary
                else ""
            )
        )
    if summary.get("best_val_loss") is not None:
        lines.append(f"best val loss {summary['best_val_loss']:.4f}")
    lines.append(f"checkpoint: {summary['checkpoint']}")
    lines.append(f"run folder: {summary['run_dir']}")
    print("\n".join(lines))


def _report(prepared: PreparedData) -> None:
    meta = prepared.meta
    tokens = ", ".join(f"{name} {count:,}" for name, count in meta["tokens"].items())
    state = "cached" if prepared.cached else "prepared"
    print(
        f"{prepared.directory}: {state}; {meta['tokenizer']['kind']} tokenizer, "
        f"vocab {meta['vocab_size']:,}; tokens: {tokens}"
    )


def _check_flags(args: Sequence[str]) -> None:
    """Refuse flags the command does not take, before it runs (fire would run it first)."""
    method = getattr(Commands, args[0], None) if args and not args[0].startswith("_") else None
    if method is None:
        return  # not a command: fire prints its usage message
    accepted = [name for name in inspect.signature(method).parameters if name != "self"]
    for arg in args[1:]:
        if arg == "--":
            return
        if arg.startswith("--") and arg not in ("--help",):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            if name not in accepted:
                valid = ", ".join(f"--{p}" for p in accepted) or "none"
                raise ConfigError(
                    f"{args[0]} takes no flag --{name} (its flags: {valid}); "
                    f"see: python -m craft.main {args[0]} --help"
                )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code (0, 1 on a CraftError, 2 on a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        gin_files, gin_params, rest = config.split_gin_flags(args)
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            rest = ["run", *rest]
        _check_flags(rest)
        config.parse(gin_files, gin_params)
        commands = Commands(gin_files, gin_params)
        fire.Fire(commands, command=rest, name="craft.main")
    except CraftError as error:
        print(f"craft: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    except fire.core.FireExit as exit_:
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print("craft: interrupted", file=sys.stderr)
        return 130
    return commands.exit_code


if __name__ == "__main__":
    sys.exit(main())
