"""Models: each module is a Config, `init`, `apply` and `loss` over a params tree."""

from craft.models import gpt, rnn

__all__ = ["gpt", "rnn"]
