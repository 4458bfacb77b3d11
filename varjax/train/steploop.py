"""The step loop every trainer shares: VAR runs, lanes of runs and the tokenizer.

A trainer supplies what one step, one log line, one evaluation and one checkpoint are
(`Hooks`); `StepLoop.run` supplies when they happen, the same for all three:

    for each step:  the optimizer step (device work, not waited for)
                    non-finite loss tracked on the device (no host sync)
      log step:     metrics fetched to the host, throughput of the window since the last
                    log (evaluation and saving excluded), the window's mean loss, progress bar
      eval step:    evaluate (not on the last step: the trainer evaluates at the end)
      SIGTERM/^C:   checkpoint of this step, then Preempted (the CLI exits 143 / 130)
      save step:    checkpoint every `checkpoint_every` steps and at `keep_steps`

Only log, eval and save steps wait for the device, so the host prepares the next batches
while the device computes (Levanter's pattern: metrics stay on device until a log step).
The first step whose loss is not finite is still known exactly: a tiny jitted update keeps
it on the device ([] for one run, [K] for K lanes), and it is read before every log,
evaluation and checkpoint, so no checkpoint ever holds a state that went non-finite.

The same update sums the loss of every step, so a log record carries `loss_mean`, the mean
training loss of the steps since the previous log (`loss_mean_steps` of them), besides the
logged step's own `loss`: one batch's loss is noisy (with 16 images a batch, by several
percent), and learning-curve fits and forecasts (analysis.extrapolate) want the mean.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from varjax import progress as progress_lib
from varjax.train import checkpoint


@dataclasses.dataclass
class Hooks:
  """What a trainer does; `StepLoop` decides when.

  step(k):              runs optimizer step k (0-based); returns its metrics on the device,
                        with a `loss` of shape [] (or [K] for lanes)
  log(done, m, rate, t): writes the log record after `done` steps; `m` holds the host
                        metrics plus `loss_mean` and `loss_mean_steps` (the window's mean
                        loss, and its steps), `rate` steps/s over the window, `t` the
                        training seconds
  evaluate(done):       a held-out evaluation after `done` steps
  save(done):           a checkpoint after `done` steps
  nonfinite(first_bad): called with the host array of the first step whose loss was not
                        finite (-1 where none) whenever one is; raises to stop the run, or
                        returns to go on (lanes mark the lane failed)
  """
  step: Callable[[int], Any]
  log: Callable[[int, Any, float, float], None]
  evaluate: Callable[[int], None]
  save: Callable[[int], None]
  nonfinite: Callable[[np.ndarray], None]


@jax.jit
def _track(first_bad, loss_sum, loss, done):
  """The first non-finite step (-1: none yet) and the window's loss sum, on the device."""
  return jnp.where((first_bad < 0) & ~jnp.isfinite(loss), done, first_bad), loss_sum + loss


@dataclasses.dataclass
class StepLoop:
  """Runs steps `first_step` .. `total - 1` with the run's cadence (see the module doc)."""
  total: int
  first_step: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  keep_steps: tuple[int, ...] = ()
  desc: str = ""
  progress: bool | None = None
  on_step: Callable[[int], None] | None = None  # after every step (tests interrupt with it)
  postfix: Callable[[Any], dict[str, str]] | None = None  # progress-bar fields of a log step
  saved_where: str = ""  # where checkpoints go, for the message after a preemption save
  train_time: float = 0.0  # seconds spent in steps, excluding evaluation and saving

  @classmethod
  def for_run(cls, run_cfg, first_step: int, **kwargs) -> "StepLoop":
    """The loop of a `RunConfig` (steps, log / eval / checkpoint cadence, keep_steps)."""
    return cls(total=run_cfg.steps, first_step=first_step, log_every=run_cfg.log_every,
               eval_every=run_cfg.eval_every, checkpoint_every=run_cfg.checkpoint_every,
               keep_steps=tuple(run_cfg.keep_steps), **kwargs)

  def run(self, hooks: Hooks) -> None:
    preempt = checkpoint.PreemptionFlag()
    bar = progress_lib.bar(total=self.total, initial=self.first_step, desc=self.desc,
                           unit="step", enabled=self.progress)
    first_bad = loss_sum = None
    window_steps, window_time, segment_start = 0, 0.0, time.perf_counter()
    try:
      for step in range(self.first_step, self.total):
        m = hooks.step(step)
        done = step + 1
        loss = m["loss"]
        if first_bad is None:
          first_bad = jnp.full(jnp.shape(loss), -1, jnp.int32)
        if loss_sum is None:  # placed like first_bad: jit puts the sum where the loss is
          loss_sum = jnp.zeros(jnp.shape(loss), jnp.float32)
        first_bad, loss_sum = _track(first_bad, loss_sum, loss, done)
        window_steps += 1
        log_now = done % self.log_every == 0 or done == self.total
        eval_now = done % self.eval_every == 0 and done < self.total
        save_now = ((done % self.checkpoint_every == 0 or done in self.keep_steps)
                    and done < self.total)
        stop_now = preempt.reached(done)
        if log_now or eval_now or save_now or stop_now:
          host = jax.device_get(m)  # waits for the queued steps: the window ends here
          window_time += time.perf_counter() - segment_start
          self._check(first_bad, hooks)
          if log_now:
            self.train_time += window_time
            mean = np.asarray(jax.device_get(loss_sum), np.float64) / window_steps
            host = dict(host, loss_mean=mean,
                        loss_mean_steps=np.full(np.shape(mean), window_steps, np.int64))
            loss_sum = None
            hooks.log(done, host, window_steps / max(window_time, 1e-9), self.train_time)
            if self.postfix is not None:
              bar.set_postfix(**self.postfix(host))
            window_steps, window_time = 0, 0.0
        bar.update(1)
        if eval_now:
          hooks.evaluate(done)
        if stop_now:
          hooks.save(done)
          raise checkpoint.Preempted.after_save(preempt.reason, done, self.saved_where)
        if save_now:
          hooks.save(done)
        if log_now or eval_now or save_now:
          segment_start = time.perf_counter()
        if self.on_step is not None:
          self.on_step(done)
      if first_bad is not None:
        self._check(first_bad, hooks)
    finally:
      bar.close()
      preempt.restore()

  @staticmethod
  def _check(first_bad, hooks: Hooks) -> None:
    bad = np.asarray(jax.device_get(first_bad))
    if (bad >= 0).any():
      hooks.nonfinite(bad)
