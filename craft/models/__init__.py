"""The model registry: each model module registers one `ModelSpec` (see `spec.py`).

Adding a model touches its own file, one line here and its gin file.
"""

from craft.models import cnn, gpt, mlp, rnn, unet
from craft.models.spec import ModelSpec, lookup

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        gpt.SPEC,
        rnn.SPEC,
        cnn.SPEC,
        mlp.SPEC,
        unet.SPEC,
    )
}


def model_spec(name: str, what: str = "TrainConfig.model") -> ModelSpec:
    """The registered spec called `name`; a ConfigError naming the close names otherwise."""
    return lookup(MODELS, name, what)


__all__ = ["MODELS", "ModelSpec", "cnn", "gpt", "mlp", "model_spec", "rnn", "unet"]
