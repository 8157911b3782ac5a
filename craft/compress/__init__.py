"""Making a trained model smaller: weight quantization and pruning of checkpoints."""
