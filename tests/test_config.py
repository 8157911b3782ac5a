"""The gin <-> Pydantic bridge: binding, validation and the messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from craft import config
from craft.data.config import DataConfig, TokenizerConfig
from craft.errors import ConfigError


@config.configurable
class NeedsValue(BaseModel):
    """A test-only model with a required field."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(gt=0)
    label: str = "x"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_bindings_reach_the_model(tmp_path: Path) -> None:
    gin_file = write(tmp_path, "a.gin", "DataConfig.window = 64\nDataConfig.source = 'x.txt'\n")
    config.parse([gin_file])
    data = config.build(DataConfig)
    assert data.window == 64 and data.source == "x.txt"
    assert data.split_ratios == (0.9, 0.05, 0.05)  # the default stays


def test_later_files_and_flags_override_earlier_ones(tmp_path: Path) -> None:
    first = write(tmp_path, "a.gin", "DataConfig.window = 64\nDataConfig.errors = 'replace'\n")
    second = write(tmp_path, "b.gin", "DataConfig.window = 32\n")
    config.parse([first, second])
    assert config.build(DataConfig).window == 32
    config.parse([first, second], ["DataConfig.window = 16"])
    assert config.build(DataConfig).window == 16
    config.parse([first, second], ["DataConfig.window = 16", "--gin.DataConfig.window=8"])
    data = config.build(DataConfig)
    assert data.window == 8 and data.errors == "replace"


def test_t5x_flag_takes_bare_words_as_strings() -> None:
    config.parse([], ["--gin.DataConfig.source=got", "--gin.DataConfig.split_ratios=(0.8,0.1,0.1)"])
    data = config.build(DataConfig)
    assert data.source == "got" and data.split_ratios == (0.8, 0.1, 0.1)


def test_include_and_macro(tmp_path: Path) -> None:
    write(tmp_path, "base.gin", "BLOCK = 48\nDataConfig.window = %BLOCK\n")
    top = write(tmp_path, "top.gin", "include 'base.gin'\nTokenizerConfig.vocab_size = 300\n")
    config.parse([top])
    assert config.build(DataConfig).window == 48
    assert config.build(TokenizerConfig).vocab_size == 300


def test_flags_override_gin_and_are_validated(tmp_path: Path) -> None:
    config.parse([], ["DataConfig.window = 64"])
    assert config.build(DataConfig, {"window": 8, "source": None}).window == 8
    with pytest.raises(ConfigError, match=r"DataConfig.window = -3 \(flag --block\): .*greater"):
        config.build(DataConfig, {"window": -3}, flag_names={"window": "block"})


def test_unknown_configurable_names_file_line_and_suggests(tmp_path: Path) -> None:
    gin_file = write(tmp_path, "bad.gin", "# comment\n\nDataConfg.block_size = 3\n")
    with pytest.raises(ConfigError) as error:
        config.parse([gin_file])
    assert "bad.gin:3" in str(error.value)
    assert "unknown configurable 'DataConfg'" in str(error.value)
    assert "did you mean 'DataConfig'" in str(error.value)


def test_misspelled_field_suggests_close_names(tmp_path: Path) -> None:
    gin_file = write(tmp_path, "bad.gin", "DataConfig.windw = 3\n")
    with pytest.raises(
        ConfigError,
        match=r"bad.gin:1: DataConfig has no field 'windw'; did you mean 'window'",
    ):
        config.parse([gin_file])


def test_far_off_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"valid names: .*window"):
        config.parse([], ["DataConfig.zzzzzz = 3"])


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ("DataConfig.window = 'many'", "valid integer"),
        ("DataConfig.window = 0", "greater than 0"),
        ("DataConfig.tokenizer = 'words'", "'char' or 'subword'"),
        ("DataConfig.split_ratios = (0.5, 0.6, -0.1)", "must not be negative"),
        ("DataConfig.split_ratios = (0.5, 0.2, 0.2)", "must sum to 1"),
        ("DataConfig.split_ratios = (0.0, 0.5, 0.5)", "leave the train split empty"),
    ],
)
def test_bad_values_name_the_binding_and_the_reason(
    tmp_path: Path, binding: str, reason: str
) -> None:
    gin_file = write(tmp_path, "bad.gin", f"DataConfig.source = 'got'\n{binding}\n")
    config.parse([gin_file])
    with pytest.raises(ConfigError) as error:
        config.build(DataConfig)
    message = str(error.value)
    assert "bad.gin:2" in message and reason in message


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    gin_file = write(tmp_path, "bad.gin", "DataConfig.window = 3\nDataConfig.source 'x'\n")
    with pytest.raises(ConfigError, match=r"bad.gin:2: gin syntax error"):
        config.parse([gin_file])


def test_unclosed_bracket_is_a_syntax_error(tmp_path: Path) -> None:
    gin_file = write(tmp_path, "bad.gin", "DataConfig.split_ratios = (0.9, 0.05,\n")
    with pytest.raises(ConfigError, match=r"bad.gin:\d+: gin syntax error"):
        config.parse([gin_file])


def test_missing_required_value_says_how_to_set_it() -> None:
    config.parse([], [])
    with pytest.raises(
        ConfigError, match=r"NeedsValue.width is required .*--gin.NeedsValue.width="
    ):
        config.build(NeedsValue)


def test_build_all_reports_every_problem() -> None:
    config.parse([], ["DataConfig.window = 0", "TokenizerConfig.vocab_size = -1"])
    with pytest.raises(ConfigError) as error:
        config.build_all()
    message = str(error.value)
    assert "DataConfig.window" in message
    assert "TokenizerConfig.vocab_size" in message
    assert "NeedsValue.width is required" in message


def test_missing_gin_file_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gin file not found: .*nope.gin; looked in"):
        config.parse([tmp_path / "nope.gin"])


def test_gin_files_are_also_found_in_the_repository_gin_folder() -> None:
    import craft.main  # noqa: F401  (registers every configurable the run files bind)

    config.parse(["got_char.gin"])
    assert config.build(DataConfig).tokenizer == "char"


def test_split_gin_flags_takes_every_form() -> None:
    argv = [
        "prepare", "--gin_file=a.gin", "--gin_file", "b.gin", "--input=x",
        "--gin_param=A.b = 1", "--gin_param", "A.c = 2", "--gin.A.d=3", "--type", "char",
    ]  # fmt: skip
    files, params, rest = config.split_gin_flags(argv)
    assert files == ["a.gin", "b.gin"]
    assert params == ["A.b = 1", "A.c = 2", "--gin.A.d=3"]
    assert rest == ["prepare", "--input=x", "--type", "char"]


def test_gin_flag_without_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--gin_file needs a value"):
        config.split_gin_flags(["--gin_file"])


# Train and val need a share (training reads both); test may be 0.
ratios = st.tuples(st.integers(1, 100), st.integers(1, 100), st.integers(0, 100)).map(
    lambda t: tuple(x / sum(t) for x in t)
)


@settings(max_examples=50, deadline=None)
@given(
    window=st.integers(1, 10_000),
    source=st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s),
    tokenizer=st.sampled_from(["char", "subword"]),
    split=ratios,
    tokenizer_file=st.none() | st.text(max_size=20),
)
def test_effective_config_round_trips_through_gin(
    window: int, source: str, tokenizer: str, split: tuple, tokenizer_file: str | None
) -> None:
    """Law: parse(to_gin(cfg)) rebuilds cfg exactly."""
    original = DataConfig(
        window=window,
        source=source,
        tokenizer=tokenizer,  # type: ignore[arg-type]
        split_ratios=split,  # type: ignore[arg-type]
        tokenizer_file=tokenizer_file,
    )
    config.parse([], [config.to_gin([original])])
    assert config.build(DataConfig) == original
