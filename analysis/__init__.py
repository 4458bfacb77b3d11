"""Scaling-law analysis: laws, robust fits with uncertainty, forecasts, compute planning.

`python -m analysis fit|forecast|plan|report --help` for the command line.
"""

import os

from analysis.compute_optimal import (Allocation, approach1, approach2, chinchilla_allocation,
                                      wall_time_hours)
from analysis.fitting import Fit, fit_law
from analysis.laws import (ANNEALING, CHINCHILLA, LOSS_TO_FID, OVERTRAIN, Law, annealing_areas,
                           pure_power_law, saturating_power_law, with_floor)
from analysis.runs import load_metrics, load_runs
from analysis.uncertainty import Backtest, Bootstrap, bootstrap, leave_largest_out
from analysis.validate import AnalysisError



def reference_data(name: str) -> str:
  """Path of a published reference file shipped in analysis/reference_data (README there
  gives provenance): chinchilla_epoch_points.csv, lr_annealing_example_curves.csv."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_data", name)


__all__ = [
    "ANNEALING", "CHINCHILLA", "LOSS_TO_FID", "OVERTRAIN", "Allocation", "AnalysisError",
    "Backtest", "Bootstrap", "Fit", "Law", "annealing_areas", "approach1", "approach2",
    "bootstrap", "chinchilla_allocation", "fit_law", "leave_largest_out", "load_metrics",
    "load_runs", "pure_power_law", "reference_data", "saturating_power_law", "wall_time_hours",
    "with_floor",
]
