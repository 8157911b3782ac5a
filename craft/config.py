"""The gin <-> Pydantic bridge: the only module in Craft that knows gin's internals.

Every tunable is a field of a Pydantic model registered with `@configurable`. Gin binds fields
by name (`DataConfig.block_size = 256`); `build(DataConfig)` collects what gin bound and
validates it with Pydantic *outside* gin, because gin re-raises exceptions in a way that turns a
`ValidationError` into an unrelated `TypeError`. Each binding remembers where it came from (a file
and line, or a flag), so an error names the binding that set the bad value.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import json
import tokenize
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import gin.config as gin_config
import gin.config_parser as config_parser
from pydantic import BaseModel, ValidationError

from craft.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)

GIN_ROOT = Path(__file__).resolve().parent.parent / "gin"
"""The repository's `gin/` folder: `include` statements and `--gin_file` also look there."""

_UNSET: Any = object()  # default of every factory parameter: "gin bound nothing here"


class _Registered(NamedTuple):
    model: type[BaseModel]
    bound_values: Callable[[], dict[str, Any]]  # the gin-wrapped factory


_MODELS: dict[str, _Registered] = {}
_ORIGINS: dict[tuple[str, str], str] = {}  # (model name, field) -> where it was bound


def configurable(model: type[ModelT]) -> type[ModelT]:
    """Register a Pydantic model so gin can bind its fields as `ModelName.field = value`.

    Gin sees a factory whose signature lists exactly the model's fields, so a misspelled field is
    rejected by name; the factory only returns what was bound, and `build` validates it.
    """

    def bound_values(**kwargs: Any) -> dict[str, Any]:
        return {name: value for name, value in kwargs.items() if value is not _UNSET}

    bound_values.__name__ = model.__name__
    bound_values.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_UNSET)
            for name in model.model_fields
        ]
    )
    if model.__name__ in _MODELS and _MODELS[model.__name__].model is not model:
        raise ValueError(f"two configurable models are named {model.__name__}")
    wrapped = gin_config.external_configurable(bound_values, name=model.__name__, module="craft")
    _MODELS[model.__name__] = _Registered(model, wrapped)
    return model


def registered() -> dict[str, type[BaseModel]]:
    """The configurable models, by name, in registration order."""
    return {name: entry.model for name, entry in _MODELS.items()}


def reset() -> None:
    """Forget every binding (gin's global state and where each binding came from)."""
    gin_config.clear_config()
    _ORIGINS.clear()


def parse(gin_files: Sequence[str | Path] = (), gin_params: Sequence[str] = ()) -> None:
    """Replace the current bindings with those of `gin_files` then `gin_params`, later winning.

    A `gin_params` entry is gin text (`"DataConfig.block_size = 64"`) or a t5x-style flag
    (`"--gin.DataConfig.block_size=64"`). Raises `ConfigError` naming the file and line or flag.
    """
    reset()
    for gin_file in gin_files:
        _parse_file(Path(gin_file), including=None)
    for param in gin_params:
        text, label = _flag_to_binding(param)
        _parse_text(text, origin=label, filename=None)


def build(
    model: type[ModelT],
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> ModelT:
    """Validate `model` from its gin bindings, then `overrides` (e.g. CLI flags; None = unset).

    `flag_names` maps an overridden field to the flag that set it, for error messages.
    """
    name = model.__name__
    if name not in _MODELS:
        raise ValueError(f"{name} is not registered with @configurable")
    try:
        values = _MODELS[name].bound_values()
    except Exception as error:  # gin evaluates macros and references here
        raise ConfigError(f"could not evaluate the bindings of {name}: {error}") from None
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    values.update(given)
    try:
        return model.model_validate(values)
    except ValidationError as error:
        origins = {key: f"flag --{(flag_names or {}).get(key, key)}" for key in given}
        raise ConfigError(_explain(name, error, origins)) from None


def build_all() -> dict[str, BaseModel]:
    """Validate every registered model; report all the bad values at once."""
    built: dict[str, BaseModel] = {}
    problems: list[str] = []
    for name, entry in _MODELS.items():
        try:
            built[name] = build(entry.model)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("\n".join(problems))
    return built


def to_gin(configs: Iterable[BaseModel]) -> str:
    """The effective configuration as gin text that `parse` reads back to the same values."""
    lines = []
    for cfg in configs:
        for field, value in cfg.model_dump(mode="json").items():
            lines.append(f"{type(cfg).__name__}.{field} = {value!r}")
    return "\n".join(lines) + "\n"


def to_json(configs: Iterable[BaseModel]) -> str:
    """The effective configuration as JSON: `{"ModelName": {field: value}}`."""
    return json.dumps({type(c).__name__: c.model_dump(mode="json") for c in configs}, indent=2)


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Take the gin flags out of `argv`: returns (gin files, gin params, the other arguments).

    Understands `--gin_file=F`, `--gin_file F`, `--gin_param=B`, `--gin_param B` and the t5x
    form `--gin.Name.field=value`; fire never sees them, as it cannot parse the t5x form.
    """
    files: list[str] = []
    params: list[str] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        for flag, bucket in (("--gin_file", files), ("--gin_param", params)):
            if arg == flag:
                if i + 1 >= len(args):
                    raise ConfigError(f"{flag} needs a value")
                bucket.append(args[i + 1])
                i += 1
                break
            if arg.startswith(flag + "="):
                bucket.append(arg[len(flag) + 1 :])
                break
        else:
            if arg.startswith("--gin."):
                params.append(arg)
            else:
                rest.append(arg)
        i += 1
    return files, params, rest


def _flag_to_binding(param: str) -> tuple[str, str]:
    """Gin text and a label for one `--gin_param` value or `--gin.Name.field=value` flag."""
    if not param.startswith("--gin."):
        return param, f"flag --gin_param={param!r}"
    key, sep, value = param[len("--gin.") :].partition("=")
    if not sep or not key:
        raise ConfigError(f"flag {param}: expected --gin.Name.field=value")
    # A bare word is taken as a string, so `--gin.DataConfig.source=got` needs no inner quotes.
    if not value.startswith(("@", "%")):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = repr(value)
    return f"{key} = {value}", f"flag {param}"


def _resolve(path: Path, including: Path | None) -> Path:
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute():
        if including is not None:
            candidates.insert(0, including.parent / path)
        # Craft's own configs, from any working folder: `gin/got_char.gin` or `got_char.gin`.
        candidates += [GIN_ROOT.parent / path, GIN_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    where = f" (included from {including})" if including else ""
    raise ConfigError(f"gin file not found: {path}{where}; looked in: {searched}")


def _parse_file(path: Path, including: Path | None) -> None:
    resolved = _resolve(path, including)
    try:
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read gin file {resolved}: {error}") from None
    _parse_text(text, origin=_display(resolved), filename=resolved)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _parse_text(text: str, *, origin: str, filename: Path | None) -> None:
    """Bind every statement of `text`; `origin` is a file name or a flag, for messages."""

    def where(line: int) -> str:
        return f"{origin}:{line}" if filename is not None else origin

    parser = config_parser.ConfigParser(text, gin_config.ParserDelegate(skip_unknown=False))
    try:
        for statement in parser:
            line = statement.location.line_num
            if isinstance(statement, config_parser.IncludeStatement):
                _parse_file(Path(statement.filename), including=filename)
            elif isinstance(statement, config_parser.ImportStatement):
                _import(statement.module, where(line))
            elif isinstance(statement, config_parser.BindingStatement):
                _bind(statement, where(line))
            else:
                raise ConfigError(f"{where(line)}: unsupported gin statement")
    except SyntaxError as error:
        raise ConfigError(f"{where(error.lineno or 0)}: gin syntax error: {error.msg}") from None
    except tokenize.TokenError as error:  # e.g. an unclosed bracket at the end of the text
        message, (line, _) = error.args
        raise ConfigError(f"{where(line)}: gin syntax error: {message}") from None
    except ValueError as error:  # an unknown @reference, raised while parsing
        line = parser._current_location().line_num  # gin has no public accessor for it
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"{where(line)}: {first_line}") from None


def _import(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"{where}: cannot import {module}: {error}") from None


def _bind(statement: Any, where: str) -> None:
    scope, selector, field, value = (
        statement.scope,
        statement.selector,
        statement.arg_name,
        statement.value,
    )
    if scope:
        raise ConfigError(f"{where}: gin scopes ('{scope}/') are not used by Craft")
    if not field:  # a macro: `NAME = value`, used as `%NAME`
        gin_config.bind_parameter((selector, "gin.macro", "value"), value)
        return
    name = selector.removeprefix("craft.")
    if name not in _MODELS:
        raise ConfigError(
            f"{where}: unknown configurable '{selector}'" + _suggest(name, list(_MODELS))
        )
    fields = list(_MODELS[name].model.model_fields)
    if field not in fields:
        raise ConfigError(f"{where}: {name} has no field '{field}'" + _suggest(field, fields))
    gin_config.bind_parameter(("", name, field), value)
    _ORIGINS[(name, field)] = where


def unknown_name(what: str, name: str, choices: Iterable[str]) -> str:
    """`'cnnn' is not a registered model (registered: ...); did you mean 'cnn'?`"""
    names = list(choices)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?" if close else ""
    return f"{name!r} is not a registered {what} (registered: {', '.join(names)}){hint}"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return "; valid names: " + ", ".join(choices)


def _explain(name: str, error: ValidationError, origins: Mapping[str, str]) -> str:
    """One line per Pydantic error, naming the binding that set the value."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "missing":
            lines.append(
                f"{name}.{field} is required but not set: bind it in a gin file "
                f"({name}.{field} = ...) or with --gin.{name}.{field}=..."
            )
            continue
        where = origins.get(field) or _ORIGINS.get((name, field), "default")
        value = item.get("input")
        reason = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}.{field} = {value!r} ({where}): {reason}")
    return "\n".join(lines)
