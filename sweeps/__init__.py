"""Sweep specs, launch backends (local, lanes, ray, tpu) and the run registry."""
