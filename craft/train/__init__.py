"""Training: the state pytree and the compiled pure step."""

from craft.train.state import TrainState, init_state, to_device
from craft.train.step import make_train_step

__all__ = ["TrainState", "init_state", "make_train_step", "to_device"]
