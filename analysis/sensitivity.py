"""Learning-rate sensitivity per model size from an lr sweep (Wortsman et al. 2023).

Wortsman et al. ("Small-scale proxies for large-scale Transformer training
instabilities", 2023) summarise how much a model's final loss depends on its learning rate
by one number per model:

    sensitivity = mean over the swept lrs of [min(L(lr), L0) - L*]

L(lr) the final loss at that lr, L0 the loss at initialisation (a run that ends above it,
diverged or never learned, counts as L0: the cap keeps one blow-up from dominating the
mean), L* the best loss of the sweep. A flat lr curve gives 0; a model that learns only in a
narrow band of lrs gives a value near L0 - L*. The number depends on the grid (its span
and spacing), so compare sizes swept over the same lrs.

Runs are grouped by (N, D, batch): N and D within 2% share a level (as in
analysis.hparams), runs at the same lr in a group (seeds) are averaged first, so every lr
weighs once. A group with a single lr says nothing about sensitivity and is listed under
`skipped`. Per N: the mean of its groups' sensitivities (and their range).

L0. A varjax run logs its first loss at step `run.log_every` (metrics.jsonl has no step-0
record: the first train record is already after `log_every` updates, the first eval after
`eval_every`), so the loss at initialisation is not measured. analysis hparams takes
L0 = ln V, the cross-entropy of uniform logits over the V-token codebook, as the closed
form: VAR's output head starts at 0.02 x the init std of its C -> V Linear (INIT_HEAD in
varjax/models/var.py) on a normalised stream, so the initial logits are near zero and the
initial loss is ln V to within a few thousandths of a nat. `--l0` overrides it with a
measured value.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from analysis.validate import AnalysisError, check_positive_finite

DEFINITION = ("mean over the swept lrs of min(L(lr), L0) - L*; L0 the loss at "
              "initialisation, L* the group's best (Wortsman et al. 2023)")


@dataclasses.dataclass
class Group:
  n: float
  d: float
  batch: float
  l0: float
  lr: np.ndarray  # float64[lrs], increasing
  loss: np.ndarray  # float64[lrs]: mean final loss over the runs at that lr
  runs: np.ndarray  # int64[lrs]


def sensitivity(loss: np.ndarray, l0: float) -> float:
  """Wortsman et al.'s sensitivity of one group: mean of min(L, L0) - L* over its lrs, with
  L* = min(min L, L0) (a sweep where every lr ended above L0 gives 0, flagged by the caller)."""
  capped = np.minimum(np.asarray(loss, np.float64), l0)
  return float(np.mean(capped - capped.min()))


def make_groups(n, d, batch, lr, loss, l0) -> list[Group]:
  """Runs grouped by (N level, D level, batch), each lr once (seeds averaged)."""
  from analysis.hparams import levels
  n_id, n_lv = levels(n)
  d_id, d_lv = levels(d)
  frame = pd.DataFrame({"n": n_id, "d": d_id, "batch": batch, "lr": lr, "loss": loss, "l0": l0})
  groups = []
  for (i, j, b), rows in frame.groupby(["n", "d", "batch"], sort=True):
    if rows["l0"].nunique() > 1:
      raise AnalysisError(f"runs at N={n_lv[i]:.3g}, D={d_lv[j]:.3g}, batch {b:g} have "
                          f"different L0 ({', '.join(f'{v:.4g}' for v in rows['l0'].unique())}): "
                          "one lr sweep needs one loss at initialisation")
    g = rows.groupby("lr", sort=True)["loss"].agg(["mean", "size"]).reset_index()
    groups.append(Group(float(n_lv[i]), float(d_lv[j]), float(b), float(rows["l0"].iloc[0]),
                        g["lr"].to_numpy(np.float64), g["mean"].to_numpy(np.float64),
                        g["size"].to_numpy(np.int64)))
  return groups


def analyse(n, d, batch, lr, loss, l0, l0_source: str = "given") -> dict:
  """The sensitivity report (module docstring) from per-run arrays; `l0` a number or one
  per run."""
  arrays = {k: np.asarray(v, np.float64) for k, v in
            (("N", n), ("D", d), ("batch", batch), ("lr", lr), ("loss", loss))}
  for name, values in arrays.items():
    check_positive_finite(name, values)
  l0 = np.broadcast_to(np.asarray(l0, np.float64), arrays["loss"].shape)
  if not np.isfinite(l0).all() or (l0 <= 0).any():
    raise AnalysisError(f"L0 (the loss at initialisation) must be a positive number, got "
                        f"{l0[~(np.isfinite(l0) & (l0 > 0))][0]:g}")
  groups = make_groups(*arrays.values(), l0)
  rows, skipped = [], []
  for g in groups:
    where = {"N": g.n, "D": g.d, "batch": g.batch}
    if len(g.lr) < 2:
      skipped.append({**where, "reason": f"a single lr ({g.lr[0]:g}): no sweep to summarise"})
      continue
    best = int(np.argmin(g.loss))
    row = {**where, "L0": g.l0, "lrs": g.lr.tolist(), "losses": g.loss.tolist(),
           "runs": int(g.runs.sum()), "L_star": float(min(g.loss.min(), g.l0)),
           "best_lr": float(g.lr[best]), "sensitivity": sensitivity(g.loss, g.l0),
           "above_L0": int((g.loss > g.l0).sum())}
    if g.loss.min() >= g.l0:
      row["note"] = "every lr ended at or above L0: nothing learned, sensitivity 0"
    rows.append(row)
  if not rows:
    raise AnalysisError(f"no (N, D, batch) group sweeps two or more learning rates "
                        f"({len(groups)} group(s), one lr each): lr sensitivity needs an lr sweep")
  by_n = []
  for n_value in sorted({r["N"] for r in rows}):
    values = [r["sensitivity"] for r in rows if r["N"] == n_value]
    by_n.append({"N": n_value, "sensitivity": float(np.mean(values)), "groups": len(values),
                 "min": float(min(values)), "max": float(max(values))})
  return {"definition": DEFINITION, "L0_source": l0_source, "groups": rows, "by_N": by_n,
          "skipped": skipped}


def uniform_l0(vocab_size) -> np.ndarray:
  """ln V: the cross-entropy of uniform logits over V tokens, elementwise."""
  v = np.asarray(vocab_size, np.float64)
  if not np.isfinite(v).all() or (v < 2).any():
    raise AnalysisError(f"vocabulary size must be a whole number >= 2 for L0 = ln V, got "
                        f"{v[~(np.isfinite(v) & (v >= 2))][0]:g}")
  return np.log(v)


# ---------------------------------------------------------------- text and plot

def summary_text(report: dict) -> str:
  if "skipped_all" in report:
    return f"lr sensitivity: skipped: {report['skipped_all']}"
  lines = [f"lr sensitivity ({report['definition']}; L0: {report['L0_source']}):",
           f"  {'N':>9} {'D':>9} {'batch':>6} {'lrs':>3} {'best lr':>9} {'L*':>7} "
           f"{'L0':>7} {'>L0':>3} {'sensitivity':>11}"]
  for r in report["groups"]:
    lines.append(f"  {r['N']:>9.3g} {r['D']:>9.3g} {r['batch']:>6g} {len(r['lrs']):>3} "
                 f"{r['best_lr']:>9.3g} {r['L_star']:>7.4f} {r['L0']:>7.4f} "
                 f"{r['above_L0']:>3} {r['sensitivity']:>11.4f}")
  for r in report["by_N"]:
    lines.append(f"  N={r['N']:.3g}: sensitivity {r['sensitivity']:.4f} (mean of "
                 f"{r['groups']} group(s), {r['min']:.4f}-{r['max']:.4f})")
  lines += [f"  skipped N={s['N']:.3g}, D={s['D']:.3g}, batch {s['batch']:g}: {s['reason']}"
            for s in report["skipped"]]
  return "\n".join(lines)


def plot(report: dict, out_dir: str) -> str:
  """lr_sensitivity.png: sensitivity against N (one line per (D, batch), the per-N mean in
  black), and the final loss against lr per group with L0."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from analysis.plots import _save
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
  series = sorted({(r["D"], r["batch"]) for r in report["groups"]})
  colours = dict(zip(series, plt.cm.viridis(np.linspace(0, 0.9, len(series)))))
  for key in series:
    rows = sorted((r for r in report["groups"] if (r["D"], r["batch"]) == key),
                  key=lambda r: r["N"])
    left.plot([r["N"] for r in rows], [r["sensitivity"] for r in rows], "o-",
              color=colours[key], alpha=0.7, label=f"D={key[0]:.3g}, batch {key[1]:g}")
  means = report["by_N"]
  left.plot([r["N"] for r in means], [r["sensitivity"] for r in means], "ks-", lw=2,
            label="mean per N")
  left.set_xscale("log")
  left.set_xlabel("N (parameters)")
  left.set_ylabel("lr sensitivity (nats)")
  left.set_title("mean over lrs of min(L, L0) - L*", fontsize=9)
  left.legend(fontsize=7)
  sizes = sorted({r["N"] for r in report["groups"]})
  shade = dict(zip(sizes, plt.cm.plasma(np.linspace(0, 0.85, len(sizes)))))
  styles = dict(zip(series, ["-", "--", ":", "-."] * len(series)))
  for r in report["groups"]:
    right.plot(r["lrs"], r["losses"], marker="o", ms=3, ls=styles[(r["D"], r["batch"])],
               color=shade[r["N"]], label=f"N={r['N']:.3g}, batch {r['batch']:g}")
  for l0 in sorted({r["L0"] for r in report["groups"]}):
    right.axhline(l0, color="grey", ls="--", lw=1)
    right.annotate(f"L0 = {l0:.3f}", (0.02, l0), xycoords=("axes fraction", "data"),
                   fontsize=7, va="bottom")
  right.set_xscale("log")
  right.set_xlabel("peak lr")
  right.set_ylabel("final loss")
  right.legend(fontsize=6, ncol=2)
  return _save(fig, f"{out_dir}/lr_sensitivity.png")
