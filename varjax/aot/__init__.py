"""Ahead-of-time compiles for accelerators this machine does not have.

`tpu`: libtpu compiles the attention kernels, or a whole sharded training step, for a TPU
topology (`python -m varjax.aot.tpu`). `gpu`: the Pallas GPU kernels' Triton modules built
to sm_90 cubins with the official Triton and ptxas. They sit above `train/` because they
compile training steps; nothing in varjax imports them.
"""
