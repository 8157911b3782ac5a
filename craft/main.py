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

import fire
import torch
from pydantic import BaseModel

from craft import config, launch, sweeps
from craft.checkpoint import resolve as resolve_checkpoint
from craft.compress.prune import check_sparsity, prune_checkpoint
from craft.compress.quantize import check_bits, quantize_checkpoint
from craft.config import ModelT
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import PreparedData, default_prepared_dir, prepare, training_lines
from craft.data.sources import fetch as fetch_source
from craft.data.sources import resolve_source
from craft.data.tokenizers import SentencePieceTokenizer
from craft.errors import ConfigError, CraftError
from craft.generate import SamplingConfig, generate_text
from craft.inference import load_for_inference
from craft.models import model_spec
from craft.sample_images import check_options, device_for_sampling, sample_to_files
from craft.sample_scores import score_samples
from craft.sweeps.report import write_report
from craft.tasks.diffusion import Diffusion
from craft.tasks.lm import report
from craft.tracking import plot_run
from craft.train import memory
from craft.train.config import TrainConfig
from craft.train.evaluate import evaluate
from craft.train.quantized_params import dequantized, holds_quantized
from craft.tree import tree_map


class Commands:
    """Craft: build, train and evaluate functional PyTorch models.

    Every command accepts --gin_file=FILE (repeatable, later files win), --gin_param="Name.field
    = value" (repeatable) and --gin.Name.field=value. Without a command, runs what the gin files
    configure.
    """

    def __init__(
        self, gin_files: Sequence[str], gin_params: Sequence[str],
        repeated: dict[str, list[str]] | None = None,
    ):  # fmt: skip
        self._gin_files = list(gin_files)
        self._gin_params = list(gin_params)
        self._repeated = repeated or {}
        self.exit_code = 0

    def run(
        self, resume: str | None = None, resume_with_changes: bool = False,
        run_dir: str | None = None,
    ) -> None:  # fmt: skip
        """Train what the gin files configure (RunConfig.task: lm, classify, diffusion): data,
        model, checkpoints, metrics, previews.

        --resume=latest continues this experiment's newest run; --resume=PATH continues from a
        checkpoint file or run folder. The run goes on in the folder it came from. A config
        that changes what the run computes (batch size, lr, schedule, seed, model) is refused
        unless --resume_with_changes is given. --run_dir=DIR: write the run into exactly this
        new (or empty) folder instead of <output_dir>/<name>/<date>/<time>/.
        """
        if resume is not None:
            resume = _path_flag("resume", resume, "latest, a checkpoint file or a run folder")
        if run_dir is not None:
            run_dir = _path_flag("run_dir", run_dir, "a new folder for the run")
            if resume is not None:
                raise ConfigError("--run_dir is for a new run; a resumed run goes on in its own")
        if not isinstance(resume_with_changes, bool):
            raise ConfigError("--resume_with_changes takes no value")
        summary = launch.train(
            self._configs(), resume, resume_with_changes=resume_with_changes,
            run_dir=Path(run_dir) if run_dir is not None else None,
        )  # fmt: skip
        self.exit_code = EXIT_CODES.get(summary["status"], 0)

    train = run

    def evaluate(
        self, checkpoint: str, split: str = "val", data_dir: str | None = None,
        batch_size: int = 64, num_samples: int | None = None, steps: int | None = None,
        guidance: float | None = None, sampler: str | None = None, seed: int = 0,
        device: str = "auto",
    ) -> None:  # fmt: skip
        """The task's metrics over a whole split, as JSON (lm: loss, perplexity, bits per token
        and character; classify: loss, accuracy; diffusion: loss, and the quality of samples
        as the reference judge sees them: class_accuracy, frechet_distance, frechet_floor).

        --checkpoint: a checkpoint file or a run folder (its newest checkpoint); --split:
        train, val or test; --data_dir: where the data lives (default: data/), or a prepared
        text folder itself; --device: auto (a GPU when there is one), cpu or cuda. Diffusion
        only: --num_samples (default 1,000 on a CPU, 10,000 on a GPU), --steps, --guidance,
        --sampler (default: the run's DiffusionConfig), --seed.
        """
        if batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {batch_size}")
        where = _device_flag(device)  # a bad flag fails before the checkpoint is read
        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        loaded = load_for_inference(path)
        sampling = {"num_samples": num_samples, "steps": steps, "guidance": guidance,
                    "sampler": sampler}  # fmt: skip
        given = [f"--{name}" for name, value in sampling.items() if value is not None]
        if given and loaded.task_name != "diffusion":
            raise ConfigError(
                f"{', '.join(given)} apply to diffusion checkpoints; {path} holds a "
                f"{loaded.task_name!r} model"
            )
        task = loaded.task(data_dir)
        if isinstance(task, Diffusion):  # before the loss: a bad flag fails at once
            check_options(task.sampler, steps=steps, guidance=guidance, kind=sampler)
        results = evaluate(
            task, loaded.loss_fn(task), tree_map(lambda leaf: leaf.to(where), loaded.params),
            split, batch_size=batch_size, device=where,
        )  # fmt: skip
        if isinstance(task, Diffusion):
            scores = score_samples(
                loaded, task, num_samples=num_samples, steps=steps, guidance=guidance,
                sampler=sampler, seed=seed, batch_size=500, device=where,
            )  # fmt: skip
            results.update(scores)
        print(json.dumps({"checkpoint": str(path), "task": task.name, "split": split, **results}))

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
        device: str = "cpu",
        dequantize: bool = False,
    ) -> None:
        """Stream text from a checkpoint (KV-cache decoding for the GPT); --device: cpu (the
        default: a small model decodes one token at a time fastest there), cuda or auto.
        A quantized checkpoint keeps its integer weights in memory; --dequantize unpacks them
        to fp32 once at load (faster decoding on a CPU, fp32 memory)."""
        sampling = SamplingConfig.checked(
            temperature=temperature, top_k=top_k, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed,
        )  # fmt: skip
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        prompt = str(prompt)  # fire reads --prompt=42 as a number
        where = _device_flag(device)
        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        if not isinstance(dequantize, bool):
            raise ConfigError("--dequantize takes no value")
        loaded = load_for_inference(path)
        params = dequantized(loaded.params) if dequantize else loaded.params
        if compile and holds_quantized(params):
            raise ConfigError(
                "--compile does not take quantized weights: add --dequantize (fp32 in memory)"
            )
        tokenizer = loaded.tokenizer()
        tokenizer.encode(prompt)  # a prompt the vocabulary lacks fails before any output
        for index in range(num_samples):
            if num_samples > 1:
                print(f"--- sample {index + 1} ---")
            sys.stdout.write(prompt)
            generate_text(
                loaded.model_name, params, loaded.model_cfg, tokenizer, prompt,
                sampling.model_copy(update={"seed": seed + index}), stream=sys.stdout,
                compile=compile, device=where,
            )  # fmt: skip
            print()

    def sample(
        self,
        checkpoint: str,
        num_samples: int = 64,
        label: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        output: str = "samples.png",
        save_tensors: bool = False,
        batch_size: int = 500,
        compile: bool = False,
    ) -> None:
        """Draw images from a diffusion checkpoint into a PNG grid.

        --label: one class (default: all of them, cycling, one column per class); --steps,
        --guidance, --sampler (ddim or ddpm): default to the run's DiffusionConfig;
        --save_tensors also writes the images (floats in [0, 1]) and labels as safetensors
        beside the PNG. The same --seed gives the same images.
        """
        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        output = _path_flag("output", output, "a PNG file")
        loaded = load_for_inference(path)
        written = sample_to_files(
            loaded, Path(output), num_samples=num_samples, label=label, steps=steps,
            guidance=guidance, sampler=sampler, seed=seed, save_tensors=save_tensors,
            batch_size=batch_size, compile=compile,
        )  # fmt: skip
        for file in written:
            print(file)

    def import_hf(self, source: str, output: str) -> None:
        """Import a local Hugging Face GPT-2 folder (config.json, model.safetensors, and
        tokenizer.json or vocab.json + merges.txt) as a Craft checkpoint in --output, ready for
        generate, evaluate and fine-tuning (RunConfig.init_from). Pickles are refused."""
        from craft.interop.hf_checkpoint import import_folder  # needs the hf extra

        source = _path_flag("source", source, "a Hugging Face model folder")
        output = _path_flag("output", output, "a folder for the Craft checkpoint")
        print(import_folder(Path(source), Path(output)))

    def export_hf(self, checkpoint: str, output: str) -> None:
        """Write a GPT checkpoint as a Hugging Face GPT-2 folder (config.json, model.safetensors,
        tokenizer.json) that transformers loads with from_pretrained(DIR)."""
        from craft.interop.hf_checkpoint import export_checkpoint  # needs the hf extra

        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        output = _path_flag("output", output, "a folder for the Hugging Face files")
        print(export_checkpoint(path, Path(output)))

    def quantize(
        self, checkpoint: str, output: str, bits: int = 8, group_size: int | None = None
    ) -> None:
        """Write a checkpoint's model with its linear and embedding weights quantized
        (weight-only) into the new folder --output, for evaluate and generate.

        --bits=8: int8 per output channel; --bits=4: int4 in groups of --group_size (32, the
        default, or 64) inputs, two per byte. Stored as integers plus scales; the rest of the
        params stay fp32. Prints sizes as JSON. Training cannot resume from the result.
        """
        bits, group = check_bits(bits, group_size)
        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        output = _path_flag("output", output, "a new folder for the quantized checkpoint")
        print(json.dumps(quantize_checkpoint(path, Path(output), bits, group)[1]))

    def prune(
        self, checkpoint: str, output: str, sparsity: float, structured: bool = False,
        heads: int = 0,
    ) -> None:  # fmt: skip
        """Write a checkpoint's model pruned into the new folder --output.

        Unstructured (default): in every linear weight, the --sparsity share (in [0, 1)) of
        entries smallest in magnitude is set to zero (the masks are saved too). --structured:
        a smaller dense model without the --sparsity share of MLP neurons and --heads attention
        heads per block (GPT), to fine-tune with RunConfig.init_from (the printed gin lines
        give its shape). Prints a JSON report. Training cannot resume from the result.
        """
        share = check_sparsity(sparsity)
        if not isinstance(structured, bool):
            raise ConfigError("--structured takes no value")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
            raise ConfigError(f"--heads must be a whole number >= 0, got {heads!r}")
        path = resolve_checkpoint(_path_flag("checkpoint", checkpoint, _CHECKPOINT))
        output = _path_flag("output", output, "a new folder for the pruned checkpoint")
        _, report = prune_checkpoint(path, Path(output), share, structured=structured, heads=heads)
        print(json.dumps(report))

    def sweep(
        self, random: int | None = None, parallel: int = sweeps.DEFAULT_PARALLEL,
        name: str | None = None, resume: str | None = None, seed: int = 0,
        output_dir: str = "outputs/sweeps", run_limit_s: float | None = None,
    ) -> None:  # fmt: skip
        """Run many configurations of the gin files, each an ordinary run, and report them.

        --grid="Name.field=v1,v2" (repeatable): every combination of the values; --random=N
        with --range="Name.field=loguniform(a,b)" (or uniform, int, choice; repeatable): N
        seeded draws (--seed), crossed with the grid. --parallel=K runs K at once, the CPU
        threads split between them. Runs go to <output_dir>/<name>/<date>/<time>/<run>/ (name:
        --name, else RunConfig.name). Every run's config is validated before the first starts.
        --resume=latest (or a sweep folder) runs what is not finished and skips the rest.
        --run_limit_s=S stops a run after S seconds (it saves first; --resume continues it). At
        the end: summary.md, summary.csv and curves.png in the sweep folder (see `report`).
        """
        result = sweeps.sweep(
            self._gin_files, self._gin_params, grid=self._repeated.get("grid", []),
            ranges=self._repeated.get("range", []), draws=random, parallel=parallel,
            name=name, resume=resume, seed=seed, output_dir=output_dir, run_limit_s=run_limit_s,
        )  # fmt: skip
        if any(run.status == "interrupted" for run in result.manifest.runs):
            self.exit_code = 130
        elif any(run.status in ("failed", "stopped") for run in result.manifest.runs):
            self.exit_code = 1

    def report(self, sweep: str) -> None:
        """Write summary.md, summary.csv and curves.png for a sweep folder (--sweep=DIR)."""
        for path in write_report(Path(_path_flag("sweep", sweep, "a sweep folder"))):
            print(path)

    def plot(self, run: str) -> None:
        """Write loss.png (train and val loss, lr) for a run folder from its metrics.jsonl."""
        print(plot_run(Path(run)))

    def show_config(self) -> None:
        """Print the effective configuration as gin text, the model size and, with
        TrainConfig.memory_budget_mb, the memory plan (without its probe step); runs nothing."""
        configs = self._configs()
        # First: a budget too small prints nothing else.
        plan = memory.show_plan(configs, data_fields=_prepared_fields(configs))
        print(config.to_gin(configs.values()), end="")
        print(_model_size(configs))
        for line in plan:
            print(line)

    def fetch(self, source: str = "got", data_dir: str | None = None) -> None:
        """Download a named source (cached, verified): got (Game of Thrones season 1 scripts),
        mnist (the MNIST digits)."""
        data_cfg = config.build(DataConfig, {"data_dir": data_dir})
        print(fetch_source(str(source), Path(data_cfg.data_dir)))

    def prepare(
        self,
        input: str | None = None,
        output_dir: str | None = None,
        type: str | None = None,
        tokenizer: str | None = None,
        split_ratios: tuple[float, float, float] | None = None,
        vocab_size: int | None = None,
        model_type: str | None = None,
        window: int | None = None,
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
                "window": window,
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
        print(report(_prepare(data_cfg, tok_cfg)))

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
        # Streamed as prepare does: memory stays bounded however large the text.
        lines = list(training_lines(Path(input), errors))  # type: ignore[arg-type]
        tok = SentencePieceTokenizer.train_lines(
            lines,
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


EXIT_CODES = {"interrupted": 130, "terminated": 143}
"""How a run that stopped early exits, as a shell reports a Ctrl-C (128 + SIGINT) or a
SIGTERM (128 + 15), after its clean save."""

_CHECKPOINT = "a checkpoint file or a run folder"


def _path_flag(flag: str, value: object, what: str) -> str:
    """A flag naming a path: fire turns `--flag` alone into True and `--flag=3` into 3."""
    if isinstance(value, str) and value:
        return value
    if value is True or value == "":
        raise ConfigError(f"--{flag} needs a value: --{flag}=PATH ({what})")
    raise ConfigError(
        f"--{flag}={value!r} is not a path: give {what} (for a folder named {value}, write "
        f"--{flag}=./{value})"
    )


def _device_flag(device: object) -> torch.device:
    """--device: auto (CUDA when available), cpu or cuda."""
    if device == "auto":
        return device_for_sampling()
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda: no CUDA device is available here")
    return torch.device(str(device))


_SHORT = {"vocab_size": "vocab", "num_classes": "classes"}
_PER = {"vocab_size": "vocabulary entry", "num_classes": "class"}


def _model_size(configs: dict[str, BaseModel]) -> str:
    """`# GPT: N parameters` for the model TrainConfig picks, with the data's fields (vocab
    size, classes) from the config or, when unset, per entry."""
    spec = model_spec(_get(configs, TrainConfig).model)
    model = configs[spec.config.__name__]
    label = spec.name.upper()
    model = model.model_copy(update=_prepared_fields(configs))
    missing = [name for name in spec.data_fields if getattr(model, name) is None]
    if not missing:
        filled = ", ".join(
            f"{_SHORT.get(name, name)} {getattr(model, name):,}" for name in spec.data_fields
        )
        return f"# {label}: {spec.param_count(model):,} parameters" + (
            f" ({filled})" if filled else ""
        )
    field = missing[0]
    one = spec.param_count(model.model_copy(update={field: 1}))
    per_entry = spec.param_count(model.model_copy(update={field: 2})) - one
    return (
        f"# {label}: {one - per_entry:,} parameters + {per_entry:,} per "
        f"{_PER.get(field, field)} ({field} comes from the dataset once it is prepared)"
    )


def _prepared_fields(configs: dict[str, BaseModel]) -> dict[str, int]:
    """The model's data fields an already prepared text gives (its vocabulary size), when
    the model config leaves them unset."""
    spec = model_spec(_get(configs, TrainConfig).model)
    model = configs[spec.config.__name__]
    if spec.data_fields != ("vocab_size",) or getattr(model, "vocab_size", None) is not None:
        return {}
    prepared = default_prepared_dir(_get(configs, DataConfig), _get(configs, TokenizerConfig))
    if not (prepared / "meta.json").is_file():
        return {}
    return {"vocab_size": int(json.loads((prepared / "meta.json").read_text())["vocab_size"])}


def _prepare(data_cfg: DataConfig, tok_cfg: TokenizerConfig) -> PreparedData:
    return prepare(
        resolve_source(data_cfg), default_prepared_dir(data_cfg, tok_cfg), data_cfg, tok_cfg
    )


def _get(configs: dict[str, BaseModel], kind: type[ModelT]) -> ModelT:
    found = configs[kind.__name__]
    assert isinstance(found, kind)
    return found


REPEATABLE = {"sweep": ("grid", "range")}
"""Flags a command takes several times; fire would keep only the last, so they are taken out
of the arguments first and handed to the command as lists."""


def _take_repeated(args: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the other arguments, {flag: values}) for the command's repeatable flags."""
    names = REPEATABLE.get(args[0], ()) if args else ()
    found: dict[str, list[str]] = {name: [] for name in names}
    rest, i = [args[0]] if args else [], 1
    while i < len(args):
        arg = args[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name in found:
            if "=" in arg:
                found[name].append(arg.split("=", 1)[1])
            elif i + 1 < len(args):
                found[name].append(args[i + 1])
                i += 1
            else:
                raise ConfigError(f"--{name} needs a value")
        else:
            rest.append(arg)
        i += 1
    return rest, found


def _check_flags(args: Sequence[str], repeated: dict[str, list[str]] | None = None) -> None:
    """Refuse flags the command does not take, before it runs (fire would run it first)."""
    method = getattr(Commands, args[0], None) if args and not args[0].startswith("_") else None
    if method is None:
        return  # not a command: fire prints its usage message
    accepted = [name for name in inspect.signature(method).parameters if name != "self"]
    accepted += list(repeated or {})
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
        rest, repeated = _take_repeated(rest)
        _check_flags(rest, repeated)
        config.parse(gin_files, gin_params)
        commands = Commands(gin_files, gin_params, repeated)
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
