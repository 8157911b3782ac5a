"""What a sweep varies: `--grid` value lists and `--range` distributions, expanded into runs.

A grid flag is `Name.field=v1,v2,...` (values as in `--gin.Name.field=value`: Python literals,
or bare words taken as strings); a range flag is `Name.field=loguniform(a,b)`, `uniform(a,b)`,
`int(a,b)` (both ends included) or `choice(v1,v2,...)`. Every grid combination is crossed with
`--random=N` seeded draws from the ranges.
"""

from __future__ import annotations

import ast
import itertools
import math
import random
import re
from dataclasses import dataclass

from craft.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$")
_CALL = re.compile(r"^(\w+)\((.*)\)$", re.DOTALL)
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
DRAW_DIGITS = 4
"""Significant digits kept of a float draw: the run's name and config stay readable."""


@dataclass(frozen=True)
class Axis:
    """One swept binding: a key (`Schedule.peak_lr`) and its values, each as gin text."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    """One `--range`: a key and a distribution over its values."""

    key: str
    kind: str
    args: tuple[object, ...]

    def draw(self, rng: random.Random) -> str:
        """One value, as gin text."""
        if self.kind == "choice":
            return _gin_text(rng.choice(self.args))
        low, high = self.args
        if self.kind == "int":
            return str(rng.randint(int(low), int(high)))  # type: ignore[call-overload]
        if self.kind == "loguniform":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))  # type: ignore[arg-type]
        else:
            value = rng.uniform(low, high)  # type: ignore[arg-type]
        return repr(_round_within(value, low, high))  # type: ignore[arg-type]


def parse_grid(flag: str) -> Axis:
    """`Schedule.peak_lr=1e-3,3e-3` -> Axis('Schedule.peak_lr', ('1e-3', '3e-3'))."""
    key, text = _split_flag("grid", flag)
    items = split_top_level(text)
    if not items or any(not item for item in items):
        raise ConfigError(f"--grid={flag}: give the values after '=', separated by commas")
    # Compared as values: 1e-3 and 0.001 are one run twice.
    values = [_literal_or_word(item, f"--grid={flag}") for item in items]
    if any(a == b for i, a in enumerate(values) for b in values[:i]):
        raise ConfigError(f"--grid={flag}: a value appears twice")
    return Axis(key, tuple(items))


def parse_range(flag: str) -> Range:
    """`Schedule.peak_lr=loguniform(1e-4,1e-2)` -> Range; the bounds are checked here."""
    key, text = _split_flag("range", flag)
    call = _CALL.match(text)
    if call is None or call.group(1) not in DISTRIBUTIONS:
        raise ConfigError(
            f"--range={flag}: expected one of {', '.join(d + '(...)' for d in DISTRIBUTIONS)}"
        )
    kind, items = call.group(1), split_top_level(call.group(2))
    where = f"--range={flag}"
    if kind == "choice":
        if not items or any(not item for item in items):
            raise ConfigError(f"{where}: choice needs at least one value")
        return Range(key, kind, tuple(_literal_or_word(item, where) for item in items))
    if len(items) != 2:
        raise ConfigError(f"{where}: {kind} takes two bounds, low and high")
    low, high = (_number(item, where) for item in items)
    if not low < high:
        raise ConfigError(f"{where}: the low bound must be below the high one")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs a positive low bound")
    if kind == "int" and not all(isinstance(bound, int) for bound in (low, high)):
        raise ConfigError(f"{where}: int takes whole-number bounds")
    return Range(key, kind, (low, high))


def expand(
    axes: list[Axis], ranges: list[Range], draws: int | None, seed: int
) -> list[dict[str, str]]:
    """Every run's bindings ({key: gin text}, in flag order): the grid's combinations (the
    first flag varying slowest), each crossed with `draws` draws from the ranges."""
    keys = [axis.key for axis in axes] + [r.key for r in ranges]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"a sweep binds {', '.join(repeated)} more than once")
    if ranges and draws is None:
        raise ConfigError("--range needs --random=N: how many draws to make")
    if draws is not None and not ranges:
        raise ConfigError("--random=N needs at least one --range to draw from")
    if draws is not None:
        check_whole("random", draws, 1)
    if not axes and not ranges:
        raise ConfigError("a sweep needs --grid=Name.field=v1,v2 or --random=N with --range")
    rng = random.Random(seed)
    drawn = [{r.key: r.draw(rng) for r in ranges} for _ in range(draws or 1)]
    points = itertools.product(*(axis.values for axis in axes))
    return [
        {**dict(zip([a.key for a in axes], point, strict=True)), **draw}
        for point in points
        for draw in drawn
    ]


def check_whole(flag: str, value: object, minimum: int) -> None:
    """Refuse `--flag=value` unless it is a whole number >= minimum (fire passes any type)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"--{flag} must be a whole number >= {minimum}, got {value!r}")


def split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets and quotes: `1,(2,3),'a,b'` -> 3 items."""
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if quote or depth:
        raise ConfigError(f"unbalanced brackets or quotes in {text!r}")
    last = "".join(current).strip()
    if last or items:
        items.append(last)
    return items


def _split_flag(name: str, flag: object) -> tuple[str, str]:
    if not isinstance(flag, str) or "=" not in flag:
        raise ConfigError(f"--{name}={flag!r}: expected Name.field=...")
    key, _, rest = flag.partition("=")
    key = key.strip()
    if not _KEY.match(key):
        raise ConfigError(f"--{name}={flag}: {key!r} is not a binding name like Schedule.peak_lr")
    return key, rest.strip()


def _literal_or_word(item: str, where: str) -> object:
    """A value as `--gin.Name.field=` reads it: a literal, a gin reference, or a bare word."""
    if item.startswith(("@", "%")):
        return item
    try:
        return ast.literal_eval(item)
    except (ValueError, SyntaxError, TypeError):  # TypeError: {[1]: 2}, an unhashable key
        if re.fullmatch(r"[\w.\-/]+", item):
            return item
        raise ConfigError(f"{where}: cannot read the value {item!r}") from None


def _number(item: str, where: str) -> int | float:
    value = _literal_or_word(item, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: {item!r} is not a number")
    return value


def _round_within(value: float, low: float, high: float) -> float:
    """`value` to DRAW_DIGITS significant digits, or more where fewer would leave [low, high]
    (bounds closer than the rounding); never outside the bounds."""
    for digits in range(DRAW_DIGITS, 18):
        rounded = float(f"{value:.{digits}g}")
        if low <= rounded <= high:
            return rounded
    return min(max(value, low), high)


def _gin_text(value: object) -> str:
    return value if isinstance(value, str) and value.startswith(("@", "%")) else repr(value)
