"""Training loops: the multi-scale VQ tokenizer (tokenizer.py)."""
