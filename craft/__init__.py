"""Craft: a functional PyTorch framework (pure models over parameter trees, gin + Pydantic).

import craft
cfg = craft.gpt.GPTConfig(vocab_size=65, n_layer=2, n_head=2, n_embd=64)
params = craft.gpt.init(cfg, seed=0)
opt = craft.AdamW()
step = craft.make_train_step(functools.partial(craft.gpt.loss, cfg=cfg), opt, craft.Schedule())
state = craft.init_state(params, opt)
state, metrics = step(state, {"inputs": x, "targets": y})
"""

from craft import tree
from craft.config import build, configurable, parse
from craft.data.config import DataConfig, TokenizerConfig
from craft.data.prepare import PreparedData, open_split, prepare
from craft.data.tokenizers import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer
from craft.errors import ConfigError, CraftError, DataError
from craft.generate import SamplingConfig, generate_text
from craft.interop import from_module
from craft.models import gpt, rnn
from craft.optim import SGD, AdamW, Optimizer, Schedule
from craft.runs import RunConfig
from craft.train import TrainState, init_state, make_train_step

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "AdamW",
    "CharTokenizer",
    "ConfigError",
    "CraftError",
    "DataConfig",
    "DataError",
    "Optimizer",
    "PreparedData",
    "RunConfig",
    "SamplingConfig",
    "Schedule",
    "SentencePieceTokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "TrainState",
    "build",
    "configurable",
    "from_module",
    "generate_text",
    "gpt",
    "init_state",
    "load_tokenizer",
    "make_train_step",
    "open_split",
    "parse",
    "prepare",
    "rnn",
    "tree",
]
