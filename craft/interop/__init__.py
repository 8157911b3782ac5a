"""Other formats in and out: Hugging Face GPT-2 (`hf_gpt2`), any nn.Module (`module`)."""

from craft.interop.module import from_module, supervised_loss

__all__ = ["from_module", "supervised_loss"]
