"""A stop request that arrives before the training loop listens is kept, not lost."""

from __future__ import annotations

import _thread
import signal
import time

from varjax.train import checkpoint


def test_a_simulated_ctrl_c_before_the_loop_listens_makes_the_next_loop_stop():
  checkpoint.clear_stop_request()
  previous = signal.signal(signal.SIGINT, lambda signum, frame: checkpoint.ask_to_stop())
  try:
    _thread.interrupt_main()  # what ray.cancel does to a running task
    time.sleep(0.05)  # the handler runs between bytecodes of the main thread
  finally:
    signal.signal(signal.SIGINT, previous)
  flag = checkpoint.PreemptionFlag()
  try:
    assert flag.requested and flag.reason == "Ctrl-C" and flag.reached(1)
  finally:
    flag.restore()
  later = checkpoint.PreemptionFlag()  # the request is used once
  try:
    assert not later.requested and not later.reached(1)
  finally:
    later.restore()


def test_a_cleared_request_does_not_reach_the_next_task():
  checkpoint.ask_to_stop("Ctrl-C")
  checkpoint.clear_stop_request()
  flag = checkpoint.PreemptionFlag()
  try:
    assert not flag.requested
  finally:
    flag.restore()
