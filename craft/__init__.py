"""Craft: a functional PyTorch framework (pure models over parameter trees, gin + Pydantic)."""

from craft.config import build, configurable, parse
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import PreparedData, open_split, prepare
from craft.data.tokenizers import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from craft.errors import ConfigError, CraftError, DataError
from craft.runs import RunConfig

__version__ = "0.1.0"

__all__ = [
    "CharTokenizer",
    "ConfigError",
    "CraftError",
    "DataConfig",
    "DataError",
    "PreparedData",
    "RunConfig",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "build",
    "configurable",
    "load_tokenizer",
    "open_split",
    "parse",
    "prepare",
]
