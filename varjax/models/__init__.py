"""VAR models: scale schedules (tokenizer and transformer arrive with issue 3)."""
