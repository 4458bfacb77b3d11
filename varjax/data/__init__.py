"""Datasets (TFDS builders, the embedded default) and the deterministic input pipeline."""

from varjax.data.pipeline import (ImagePipeline, example_indices, make_pipeline,
                                   pipeline_from_config, sample_positions)
from varjax.data.sources import ALIASES, build_dataset, default_data_dir, get_builder, open_split

__all__ = ["ALIASES", "ImagePipeline", "build_dataset", "default_data_dir", "example_indices",
           "get_builder", "make_pipeline", "open_split", "pipeline_from_config",
           "sample_positions"]
