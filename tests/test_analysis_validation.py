"""`python -m analysis` refuses bad arguments and bad data in one line, before any fit;
long fits show progress on a terminal.

The CLI runs in-process (`analysis.cli.main`): a subprocess costs seconds of imports.
Where a refusal must come before fitting, the fit is replaced by one that fails the test.
"""

import io
import sys

import numpy as np

from analysis import bootstrap
from analysis.fitting import fit_law
from analysis.laws import CHINCHILLA
from test_analysis_cli import synthetic_table


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_fits_and_bootstraps_show_progress_on_a_terminal_only(capsys, monkeypatch):
  """A bar per batched minimisation, on a terminal only; the fit is the same either way
  (the host callback is compiled in both cases). 300 starts, 16 kept: small programs."""
  table = synthetic_table()
  inputs = {"N": table["params"].to_numpy(), "D": table["tokens"].to_numpy()}
  y = table["loss"].to_numpy()
  grid = dict(starts=CHINCHILLA.start_grid()[::15], keep=16)
  quiet = fit_law(CHINCHILLA, inputs, y, **grid)
  assert capsys.readouterr().err == ""  # not a terminal: no bar
  terminal = Terminal()
  monkeypatch.setattr(sys, "stderr", terminal)
  shown = fit_law(CHINCHILLA, inputs, y, **grid)
  k = len(shown.top_thetas)
  replicates = max(2, 16 // k)  # 16 starts when k divides 16: the fit's program, no compile
  bootstrap(shown, replicates)
  text = terminal.getvalue()
  assert "chinchilla: screen 300 starts" in text and "chinchilla: fit 16 starts" in text
  assert f"chinchilla: bootstrap {replicates} x {k} starts" in text
  assert "active=" in text
  np.testing.assert_array_equal(shown.theta, quiet.theta)
  assert shown.objective == quiet.objective
