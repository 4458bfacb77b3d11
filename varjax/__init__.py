"""varjax: scaling-law research on VAR-style (next-scale prediction) image generators."""

__version__ = "0.1.0"
