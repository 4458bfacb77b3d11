"""Sample quality: Fréchet distances between feature statistics of samples and of a data
split (frechet.py), the FID InceptionV3 (inception.py), a small feature network for the
embedded dataset (features.py), cached reference statistics (reference.py) and the
evaluation of a run directory (fid.py). See docs/eval.md."""
