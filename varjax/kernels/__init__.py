"""Attention for VAR: the scale-causal mask, a dense XLA reference, cached attention."""
