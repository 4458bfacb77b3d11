"""The step loop's log records carry the mean loss of the steps since the previous log
(varjax/train/steploop.py): checked against numpy's mean of the same per-step losses, for
one run ([] losses), lanes ([K]) and a loop resumed mid-window."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from varjax.train import steploop


def _run(losses: np.ndarray, log_every: int, first_step: int = 0) -> list[tuple[int, dict]]:
  logged = []
  loop = steploop.StepLoop(total=len(losses), first_step=first_step, log_every=log_every,
                           eval_every=10**9, checkpoint_every=10**9, progress=False)
  loop.run(steploop.Hooks(step=lambda k: {"loss": jnp.asarray(losses[k], jnp.float32)},
                          log=lambda done, m, rate, t: logged.append((done, m)),
                          evaluate=lambda done: None, save=lambda done: None,
                          nonfinite=lambda bad: None))
  return logged


def test_log_records_carry_the_window_mean_loss():
  rng = np.random.default_rng(0)
  losses = rng.uniform(2.0, 5.0, size=11)
  logged = _run(losses, log_every=4)
  assert [done for done, _ in logged] == [4, 8, 11]  # and the last step, off the cadence
  for (done, m), start in zip(logged, (0, 4, 8)):
    np.testing.assert_allclose(m["loss_mean"], losses[start:done].mean(), rtol=1e-6)
    assert int(m["loss_mean_steps"]) == done - start
    np.testing.assert_allclose(m["loss"], losses[done - 1], rtol=1e-6)  # the step's own


def test_lanes_and_a_resumed_loop_average_their_own_window():
  rng = np.random.default_rng(1)
  losses = rng.uniform(2.0, 5.0, size=(9, 3))  # 3 lanes
  logged = _run(losses, log_every=3, first_step=4)  # resumed after step 4
  assert [done for done, _ in logged] == [6, 9]
  np.testing.assert_allclose(logged[0][1]["loss_mean"], losses[4:6].mean(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(logged[0][1]["loss_mean_steps"], [2, 2, 2])
  np.testing.assert_allclose(logged[1][1]["loss_mean"], losses[6:9].mean(axis=0), rtol=1e-6)
