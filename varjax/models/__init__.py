"""VAR models: scale schedules, the transformer, the multi-scale VQ tokenizer, sampling and
converters from the official PyTorch checkpoints (docs/models.md)."""
