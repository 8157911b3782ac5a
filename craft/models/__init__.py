"""Models: each module is a Config, `init`, `apply` and `loss` over a params tree."""

from types import ModuleType

from pydantic import BaseModel

from craft.models import gpt, rnn

MODELS: dict[str, ModuleType] = {"gpt": gpt, "rnn": rnn}
CONFIGS: dict[str, type[BaseModel]] = {"gpt": gpt.GPTConfig, "rnn": rnn.RNNConfig}

__all__ = ["CONFIGS", "MODELS", "gpt", "rnn"]
