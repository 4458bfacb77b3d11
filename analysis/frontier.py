"""The sampling frontier in a report (`report --sampling-table FILE`): quality against
sampling FLOPs per image for every sampler configuration of a sampling table (`varjax eval
sampling`; columns in docs/eval.md): plain models, collaborative drafter > refiner pairs at
each switch scale, best-of-K with a verifier.

What the block says, and how far it goes:
- the Pareto set on (sampling FLOPs per image, quality), point estimates (lower is better
  in both): a configuration is off it when another costs no more and measures no worse,
  one of the two strictly;
- the noise: each row's 95% bootstrap interval over its sample set (quality_low/high).
  Two configurations whose intervals overlap are not ranked by the table (an overlap of
  two 95% intervals is the lenient test: it keeps every pair the table cannot separate).
  For each step along the Pareto set the block says whether it is beyond the intervals,
  which configurations are beaten beyond the intervals by one that costs no more, and the
  cheapest configuration whose interval overlaps the best one's (`cheapest_within_noise`);
- collaborative series (drafter > refiner): the drafter alone's sampling FLOPs over the
  sampler's at each switch (the saving, as CoDe reports speed-ups) and the quality change
  against the drafter alone, in or outside its interval; switch 0 is the refiner alone;
- best-of-K series (the plain row is K = 1): quality against K, with the verifier's FLOPs
  (total_flops_per_image) beside the transformer's;
- the verifier: best-of-K picks samples by a classifier's confidence. A classifier trained
  on the data the fd network was trained on rewards much of what fd measures, so its fd
  gain is an upper bound on what an independent metric would show; when the verifier is the
  fd network itself the gain is no evidence at all.

`block` returns the JSON for report.json's `sampling_frontier`, `section` its markdown,
`summary_lines` its lines in the report's text output; the figure is
sampling_frontier.png.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from analysis.validate import AnalysisError

SAMPLERS = ("plain", "collaborative", "best_of_k")
PLOT_NAME = "sampling_frontier.png"


# ---------------------------------------------------------------- reading

def _float(v) -> float | None:
  v = pd.to_numeric(pd.Series([v]), errors="coerce").iloc[0]
  return None if pd.isna(v) or not math.isfinite(float(v)) else float(v)


def _int(v) -> int | None:
  v = _float(v)
  return None if v is None else int(round(v))


def _text(v) -> str | None:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return None
  v = str(v).strip()
  return v or None


def _base(path) -> str | None:
  path = _text(path)
  return None if path is None else os.path.basename(os.path.normpath(path))


def _read(path: str) -> pd.DataFrame:
  from analysis.sampling import read_table
  try:
    table = read_table(path)
  except AnalysisError as e:  # read_table speaks of the plan's flag
    msg = str(e)
    raise AnalysisError("sampling table " + msg.removeprefix("--sampling-table ")) from None
  where = f"sampling table {path}"
  bad = sorted(set(map(str, table["sampler"])) - set(SAMPLERS))
  if bad:
    raise AnalysisError(f"{where}: unknown sampler {bad[0]!r} (expected plain, collaborative "
                        "or best_of_k)")
  metrics = sorted(set(map(str, table["metric"])))
  if len(metrics) > 1:
    raise AnalysisError(f"{where}: the rows measure different distances ({', '.join(metrics)})"
                        "; the frontier needs one")
  dup = table["config"][table["config"].duplicated()]
  if len(dup):
    raise AnalysisError(f"{where}: configuration {dup.iloc[0]!r} appears twice")
  for col, what in (("quality", "a quality"), ("sampling_flops_per_image",
                                               "positive sampling FLOPs per image")):
    v = pd.to_numeric(table[col], errors="coerce")
    ok = np.isfinite(v) & ((v > 0) if col == "sampling_flops_per_image" else True)
    if not ok.all():
      i = int(np.argmax(~ok.to_numpy()))
      raise AnalysisError(f"{where}: row {i + 1} ({table['config'].iloc[i]}) has no {what} "
                          f"({col} = {table[col].iloc[i]!r})")
  collab = (table["sampler"] == "collaborative").to_numpy()
  switch = pd.to_numeric(table["switch_scale"], errors="coerce").to_numpy() \
      if "switch_scale" in table else np.full(len(table), np.nan)
  refiner = table["refiner"].notna().to_numpy() if "refiner" in table \
      else np.zeros(len(table), bool)
  bad = collab & (~np.isfinite(switch) | ~refiner)
  if bad.any():
    i = int(np.argmax(bad))
    raise AnalysisError(f"{where}: collaborative row {i + 1} ({table['config'].iloc[i]}) "
                        "has no refiner or switch_scale")
  return table


def _row(r) -> dict:
  lo, hi = _float(r.get("quality_low")), _float(r.get("quality_high"))
  sampler = str(r["sampler"])
  total = _float(r.get("total_flops_per_image"))
  sampling = float(r["sampling_flops_per_image"])
  if total is None and sampler != "best_of_k":
    total = sampling  # no verifier: nothing else to count
  return {
      "config": str(r["config"]), "sampler": sampler, "run": _base(r["run"]),
      "refiner": _base(r.get("refiner")) if sampler == "collaborative" else None,
      "switch_scale": _int(r.get("switch_scale")) if sampler == "collaborative" else None,
      "k": _int(r["k"]), "sampling_flops_per_image": sampling,
      "verifier_flops_per_image": _float(r.get("verifier_flops_per_image")),
      "total_flops_per_image": total, "quality": float(r["quality"]),
      "quality_interval_95": [lo, hi] if lo is not None and hi is not None else None,
      "images_per_s": _float(r.get("images_per_s")),
      "verifier": _text(r.get("verifier")) if sampler == "best_of_k" else None,
      "verifier_score": _float(r.get("verifier_mean_score")),
      "coverage": _float(r.get("coverage"))}


# ---------------------------------------------------------------- comparisons

def overlap(a: dict, b: dict) -> bool | None:
  """Whether two configurations' 95% intervals overlap (None when one has none)."""
  ia, ib = a["quality_interval_95"], b["quality_interval_95"]
  if ia is None or ib is None:
    return None
  return ia[0] <= ib[1] and ib[0] <= ia[1]


def _inside(q: float, iv) -> bool | None:
  return None if iv is None else iv[0] <= q <= iv[1]


def pareto(rows: list[dict], cost: str = "sampling_flops_per_image") -> list[str]:
  """Names of the rows no other row dominates on (cost, quality), cheapest first; rows
  without the cost are left out."""
  have = [r for r in rows if r[cost] is not None]
  front = [a for a in have if not any(
      b is not a and b[cost] <= a[cost] and b["quality"] <= a["quality"]
      and (b[cost] < a[cost] or b["quality"] < a["quality"]) for b in have)]
  return [r["config"] for r in sorted(front, key=lambda r: (r[cost], r["quality"]))]


def _beaten_beyond_noise(a: dict, rows: list[dict]) -> list[str]:
  """Rows that cost no more sampling FLOPs than `a` and whose interval lies wholly below
  a's: the table says they are better for no more compute."""
  if a["quality_interval_95"] is None:
    return []
  return [b["config"] for b in rows if b is not a and b["quality_interval_95"] is not None
          and b["sampling_flops_per_image"] <= a["sampling_flops_per_image"]
          and b["quality_interval_95"][1] < a["quality_interval_95"][0]]


def _plain_of(rows: list[dict]) -> dict[str, dict]:
  return {r["run"]: r for r in rows if r["sampler"] == "plain"}


def _collaborative(rows: list[dict]) -> list[dict]:
  plain = _plain_of(rows)
  pairs: dict[tuple, list[dict]] = {}
  for r in rows:
    if r["sampler"] == "collaborative":
      pairs.setdefault((r["run"], r["refiner"]), []).append(r)
  out = []
  for (drafter, refiner), members in pairs.items():
    d = plain.get(drafter)
    points = []
    for r in sorted(members, key=lambda r: r["switch_scale"]):
      p = {"config": r["config"], "switch_scale": r["switch_scale"],
           "refiner_alone": r["switch_scale"] == 0,
           "sampling_flops_per_image": r["sampling_flops_per_image"],
           "quality": r["quality"], "quality_interval_95": r["quality_interval_95"],
           "flop_ratio": None, "quality_change": None, "within_drafter_interval": None,
           "overlaps_drafter": None}
      if d is not None:
        p.update(flop_ratio=d["sampling_flops_per_image"] / r["sampling_flops_per_image"],
                 quality_change=r["quality"] - d["quality"],
                 within_drafter_interval=_inside(r["quality"], d["quality_interval_95"]),
                 overlaps_drafter=overlap(r, d))
      points.append(p)
    ref = plain.get(refiner)
    out.append({
        "drafter": drafter, "refiner": refiner,
        "drafter_config": None if d is None else d["config"],
        "drafter_quality": None if d is None else d["quality"],
        "drafter_interval_95": None if d is None else d["quality_interval_95"],
        "drafter_flops_per_image": None if d is None else d["sampling_flops_per_image"],
        "refiner_config": None if ref is None else ref["config"],
        "points": points})
  return out


def _best_of_k(rows: list[dict]) -> list[dict]:
  plain = _plain_of(rows)
  runs: dict[str, list[dict]] = {}
  for r in rows:
    if r["sampler"] == "best_of_k":
      runs.setdefault(r["run"], []).append(r)
  out = []
  for run, members in runs.items():
    one = plain.get(run)
    series = ([one] if one is not None else []) + sorted(members, key=lambda r: r["k"])
    points = []
    for r in series:
      p = {"config": r["config"], "k": r["k"],
           "sampling_flops_per_image": r["sampling_flops_per_image"],
           "total_flops_per_image": r["total_flops_per_image"],
           "quality": r["quality"], "quality_interval_95": r["quality_interval_95"],
           "verifier_score": r["verifier_score"], "coverage": r["coverage"],
           "quality_change": None, "overlaps_k1": None}
      if one is not None:
        p.update(quality_change=r["quality"] - one["quality"], overlaps_k1=overlap(r, one))
      points.append(p)
    qs = [p["quality"] for p in points]
    out.append({"run": run, "k1_config": None if one is None else one["config"],
                "verifier": next((r["verifier"] for r in members if r["verifier"]), None),
                "monotone": all(b <= a for a, b in zip(qs, qs[1:])), "points": points})
  return out


def _verifier_name(verifier: str) -> str:
  """The network's name in a verifier's description ('class confidence of verify32cnn')."""
  return verifier.removeprefix("class confidence of ").strip()


def _verifier_note(rows: list[dict], fd_network: str | None) -> dict | None:
  names = sorted({r["verifier"] for r in rows if r["sampler"] == "best_of_k" and r["verifier"]})
  if not any(r["sampler"] == "best_of_k" for r in rows):
    return None
  if not names:
    return {"verifier": None, "fd_network": fd_network, "same_network": None,
            "text": "The table does not name the best-of-K verifier: whether it is the fd "
                    "network, which would make its fd gain no evidence at all, is unknown."}
  verifier = "; ".join(names)
  nets = {_verifier_name(n) for n in names}
  same = fd_network is not None and fd_network in nets
  if same:
    text = (f"Best-of-K selects by {verifier}, the network that measures fd ({fd_network}): "
            "the search optimises the metric itself, so its fd gain is not evidence of better "
            "samples at all; a verifier of another architecture, seed or data is needed.")
  else:
    text = (f"Best-of-K selects by {verifier}, not the fd network ({fd_network or 'unknown'}), "
            "but a classifier trained on the same data: what it rewards, fd's features largely "
            "reward too, so the fd gain of best-of-K is an upper bound on what an independent "
            "metric would show.")
  return {"verifier": verifier, "fd_network": fd_network, "same_network": same, "text": text}


def _fmt(x) -> str:
  from analysis.report_md import num
  return num(x)


def _range(values) -> str:
  lo, hi = min(values), max(values)
  return f"{_fmt(lo)}x" if _fmt(lo) == _fmt(hi) else f"{_fmt(lo)}-{_fmt(hi)}x"


def _notes(block: dict, rows: list[dict]) -> list[str]:
  metric, notes = block["metric"], []
  by = {r["config"]: r for r in rows}
  no_iv = [r["config"] for r in rows if r["quality_interval_95"] is None]
  if no_iv:
    notes.append(f"{', '.join(no_iv)} {'has' if len(no_iv) == 1 else 'have'} no 95% "
                 "interval: their noise is unknown and they are left out of every "
                 "within-noise statement.")
  plain = [r for r in rows if r["sampler"] == "plain"]
  if len(plain) > 1:
    tied = [(a, b) for i, a in enumerate(plain) for b in plain[i + 1:] if overlap(a, b)]
    if tied:
      notes.append("The plain models' intervals overlap (" + "; ".join(
          f"{a['config']} {_fmt(a['quality'])}, {b['config']} {_fmt(b['quality'])}"
          for a, b in tied) + f"): the table does not rank the models themselves by {metric}.")
  steps = [s for s in block["pareto_steps"] if s["overlap"]]
  chain = block["pareto_resolved"]
  if steps and len(steps) == len(block["pareto_steps"]):
    notes.append(f"Every step along the Pareto set is within the 95% intervals (its "
                 f"{len(block['pareto'])} points are each within noise of the next): beyond "
                 "the intervals it resolves only " + _chain(chain, by, metric) + ".")
  elif steps:
    notes.append("Along the Pareto set, " + "; ".join(
        f"{s['from']} -> {s['to']} ({_fmt(s['flop_ratio'])}x the sampling FLOPs, "
        f"{metric} {s['quality_change']:+.3g})" for s in steps)
        + (" is" if len(steps) == 1 else " are") + " within the 95% intervals: the table "
        "cannot say the extra FLOPs buy anything there. Beyond the intervals the set resolves "
        + _chain(chain, by, metric) + ".")
  loose = [r["config"] for r in block["configs"]
           if not r["pareto"] and r["dominated_by"] and not r["beaten_beyond_noise_by"]
           and r["quality_interval_95"] is not None]
  if loose:
    notes.append(f"{', '.join(loose)} {'is' if len(loose) == 1 else 'are'} off the Pareto set "
                 "by point estimates only: no configuration of no more sampling FLOPs is better "
                 "beyond the intervals.")
  for s in block["collaborative"]:
    pair = f"{s['drafter']} > {s['refiner']}"
    if s["drafter_config"] is None:
      notes.append(f"No plain row of the drafter {s['drafter']}: the FLOP saving and quality "
                   f"change of {pair} are not computed.")
      continue
    pts = [p for p in s["points"] if p["within_drafter_interval"] is not None]
    within = [p for p in pts if p["within_drafter_interval"]]
    label = lambda p: f"@{p['switch_scale']}" + (" (the refiner alone)"  # noqa: E731
                                                  if p["refiner_alone"] else "")
    if pts and len(within) == len(pts):
      notes.append(f"The collaborative samplers' {metric} ({pair}) is within the plain "
                   f"drafter's 95% interval {_interval(s['drafter_interval_95'])} at every "
                   f"switch ({', '.join(label(p) + ' ' + _fmt(p['quality']) for p in pts)}): "
                   f"the table cannot rank them against {s['drafter']} alone, so their "
                   f"{_range([p['flop_ratio'] for p in pts])} FLOP saving costs no quality "
                   "this table can detect, and none is shown to gain any.")
    elif within:
      notes.append(f"{pair}: at {', '.join(label(p) for p in within)} the {metric} is within "
                   f"the drafter's 95% interval: "
                   + ("that switch is" if len(within) == 1 else "those switches are")
                   + f" not ranked against {s['drafter']} alone.")
  for s in block["best_of_k"]:
    pts = s["points"]
    if s["k1_config"] is None:
      notes.append(f"No plain row of {s['run']}: its best-of-K series has no K = 1 point.")
      continue
    tied = [p for p in pts[1:] if p["overlaps_k1"]]
    if tied:
      notes.append(f"{s['run']} best-of-K at K = {', '.join(str(p['k']) for p in tied)} is "
                   f"within the K = 1 interval {_interval(pts[0]['quality_interval_95'])}: no "
                   "gain the table can show there.")
    if not s["monotone"]:
      notes.append(f"{s['run']}'s best-of-K {metric} is not monotone in K ("
                   + ", ".join(f"K = {p['k']}: {_fmt(p['quality'])}" for p in pts)
                   + "): more samples did not always lower it.")
  if block["pareto_with_verifier"] != block["pareto"]:
    notes.append("Counting the verifier's FLOPs (total per image), the Pareto set is "
                 f"{', '.join(block['pareto_with_verifier'])}.")
  c = block["cheapest_within_noise"]
  if c and c.get("cheapest_with_verifier") and c["cheapest_with_verifier"] != c["config"]:
    t = by[c["cheapest_with_verifier"]]
    notes.append(f"Counting the verifier's FLOPs, the cheapest configuration within the best's "
                 f"interval is {t['config']} ({_fmt(t['total_flops_per_image'])} FLOPs per "
                 "image in all).")
  return notes


def _chain(chain: list[str], by: dict, metric: str) -> str:
  if len(chain) == 1:
    return f"one level, {chain[0]}"
  return " -> ".join(f"{n} ({_fmt(by[n]['sampling_flops_per_image'])} FLOPs, {metric} "
                     f"{_fmt(by[n]['quality'])})" for n in chain)


def resolved(front: list[str], by: dict) -> list[str]:
  """The Pareto set thinned to the levels the intervals separate: from its cheapest point,
  each next is the cheapest later point whose interval lies wholly below the current one's
  (points without an interval are skipped)."""
  pts = [by[n] for n in front if by[n]["quality_interval_95"] is not None]
  if not pts:
    return []
  chain = [pts[0]]
  for r in pts[1:]:
    if r["quality_interval_95"][1] < chain[-1]["quality_interval_95"][0]:
      chain.append(r)
  return [r["config"] for r in chain]


def _interval(iv) -> str:
  from analysis.report_md import interval
  return interval(iv) or "(none)"


# ---------------------------------------------------------------- the block

def block(table_path: str, out_dir: str | None) -> dict:
  """report.json's `sampling_frontier` from a sampling table; with `out_dir`, the figure
  sampling_frontier.png there (its path in `plot`)."""
  table = _read(table_path)
  rows = [_row(r) for _, r in table.iterrows()]
  metric = str(table["metric"].iloc[0])
  nets = sorted({str(v) for v in table["feature_network"].dropna()}) \
      if "feature_network" in table else []
  fd_network = nets[0] if len(nets) == 1 else (
      metric.removeprefix("fd_") if metric.startswith("fd_") else None)
  front = pareto(rows)
  front_total = pareto(rows, "total_flops_per_image")
  for r in rows:
    r["pareto"] = r["config"] in front
    r["dominated_by"] = [] if r["pareto"] else [
        b["config"] for b in rows if b is not r
        and b["sampling_flops_per_image"] <= r["sampling_flops_per_image"]
        and b["quality"] <= r["quality"]]
    r["beaten_beyond_noise_by"] = _beaten_beyond_noise(r, rows)
  by = {r["config"]: r for r in rows}
  steps = []
  for a, b in zip(front, front[1:]):
    ra, rb = by[a], by[b]
    steps.append({"from": a, "to": b,
                  "flop_ratio": rb["sampling_flops_per_image"] / ra["sampling_flops_per_image"],
                  "quality_change": rb["quality"] - ra["quality"], "overlap": overlap(ra, rb)})
  best = min(rows, key=lambda r: r["quality"])
  cheapest = None
  for r in rows:
    r["within_noise_of_best"] = overlap(r, best)
  if best["quality_interval_95"] is not None:
    near = [r for r in rows if r["within_noise_of_best"]]
    c = min(near, key=lambda r: (r["sampling_flops_per_image"], r["quality"]))
    with_v = [r for r in near if r["total_flops_per_image"] is not None]
    cv = min(with_v, key=lambda r: (r["total_flops_per_image"], r["quality"])) if with_v else None
    cheapest = {"config": c["config"], "sampling_flops_per_image": c["sampling_flops_per_image"],
                "total_flops_per_image": c["total_flops_per_image"], "quality": c["quality"],
                "quality_interval_95": c["quality_interval_95"], "best": best["config"],
                "best_quality": best["quality"],
                "best_interval_95": best["quality_interval_95"],
                "best_sampling_flops_per_image": best["sampling_flops_per_image"],
                "flop_saving_vs_best": best["sampling_flops_per_image"]
                / c["sampling_flops_per_image"],
                "within_noise_of_best": [r["config"] for r in near],
                "cheapest_with_verifier": None if cv is None else cv["config"]}
  num_images = sorted({v for v in (_int(x) for x in table.get("num_images", [])) if v})
  protocol = {}
  for col in ("cfg", "top_k", "top_p", "seed", "reference_dataset", "reference_split",
              "reference_count", "quality_bootstrap", "device"):
    if col in table:
      vals = sorted({str(v) for v in table[col].dropna()})
      if len(vals) == 1:
        v = table[col].dropna().iloc[0]
        protocol[col] = v.item() if hasattr(v, "item") else v
      elif vals:
        protocol[col] = vals
  out = {
      "source": os.path.abspath(table_path), "metric": metric, "fd_network": fd_network,
      "num_images": num_images[0] if len(num_images) == 1 else (num_images or None),
      "protocol": protocol, "cost_basis": "sampling_flops_per_image (transformer only; "
      "total_flops_per_image adds the verifier)",
      "configs": rows, "pareto": front, "pareto_with_verifier": front_total,
      "pareto_steps": steps, "pareto_resolved": resolved(front, by), "best": best["config"],
      "cheapest_within_noise": cheapest,
      "collaborative": _collaborative(rows), "best_of_k": _best_of_k(rows),
      "verifier_note": _verifier_note(rows, fd_network)}
  out["notes"] = _notes(out, rows)
  if best["quality_interval_95"] is None:
    out["notes"].insert(0, f"The best configuration {best['config']} has no interval: the "
                        "cheapest configuration within its noise is not computed.")
  if out_dir:
    out["plot"] = plot(out, os.path.join(out_dir, PLOT_NAME))
  return out


# ---------------------------------------------------------------- the figure

def plot(block: dict, path: str) -> str:
  """fd against sampling FLOPs per image (log x): plain models as points, each
  collaborative series as a line from the refiner alone through its switches (@k) to the
  drafter alone, each best-of-K series as a dashed line through K = 1, 2, ...; error bars are
  the 95% intervals, the Pareto set is ringed, the band is the best's interval."""
  from analysis.plots import _save, plt
  rows = block["configs"]
  by = {r["config"]: r for r in rows}
  models = []
  for r in rows:
    for m in (r["run"], r["refiner"]):
      if m and m not in models:
        models.append(m)
  colour = {m: f"C{i % 10}" for i, m in enumerate(models)}
  fig, ax = plt.subplots(figsize=(8.5, 6.5))

  def bars(rs, **kw):
    x = [r["sampling_flops_per_image"] for r in rs]
    y = [r["quality"] for r in rs]
    err = [[r["quality"] - r["quality_interval_95"][0] if r["quality_interval_95"] else 0
            for r in rs],
           [r["quality_interval_95"][1] - r["quality"] if r["quality_interval_95"] else 0
            for r in rs]]
    return ax.errorbar(x, y, yerr=err, capsize=3, elinewidth=1, **kw)

  def label(r, text, dx=6, dy=6):
    ax.annotate(text, (r["sampling_flops_per_image"], r["quality"]), textcoords="offset points",
                xytext=(dx, dy), fontsize=8, color="0.2")

  best = by[block["best"]]
  if best["quality_interval_95"]:
    lo, hi = best["quality_interval_95"]
    ax.axhspan(lo, hi, color="0.85", alpha=0.6, zorder=0,
               label=f"95% interval of the best ({best['config']})")
  for r in rows:
    if r["sampler"] == "plain":
      bars([r], fmt="o", color=colour[r["run"]], ms=8, zorder=4, label=f"{r['run']} (plain)")
      label(r, r["run"], dy=8)
  series_colours = iter(f"C{i % 10}" for i in range(len(models), len(models) + 10))
  for s in block["collaborative"]:
    pts = [by[p["config"]] for p in s["points"]]
    line = list(pts)
    if s["refiner_config"] and not any(p["refiner_alone"] for p in s["points"]):
      line.insert(0, by[s["refiner_config"]])
    if s["drafter_config"]:
      line.append(by[s["drafter_config"]])
    c = next(series_colours)
    ax.plot([r["sampling_flops_per_image"] for r in line], [r["quality"] for r in line],
            "-", color=c, lw=1.5, alpha=0.8, zorder=2)
    bars(pts, fmt="D", color=c, ms=6, zorder=3,
         label=f"collaborative {s['drafter']} > {s['refiner']}\n(@k: switch scale"
         + (f"; @0 = {s['refiner']} alone)" if any(p["refiner_alone"] for p in s["points"])
            else ")"))
    for p, r in zip(s["points"], pts):
      label(r, f"@{p['switch_scale']}", dy=-12)
  for s in block["best_of_k"]:
    pts = [by[p["config"]] for p in s["points"]]
    c = colour[s["run"]]
    ax.plot([r["sampling_flops_per_image"] for r in pts], [r["quality"] for r in pts], "--",
            color=c, lw=1.5, alpha=0.8, zorder=2)
    searched = [r for r in pts if r["sampler"] == "best_of_k"]
    bars(searched, fmt="s", color=c, ms=6, zorder=3, label=f"{s['run']} best-of-K")
    for p, r in zip(s["points"], pts):
      if r["sampler"] == "best_of_k":
        label(r, f"K={p['k']}")
  front = [by[n] for n in block["pareto"]]
  ax.plot([r["sampling_flops_per_image"] for r in front], [r["quality"] for r in front], "o",
          ms=15, mfc="none", mec="black", mew=1.5, zorder=5,
          label="Pareto set (point estimates)")
  ax.set_xscale("log")
  ax.set_xlabel("sampling FLOPs per image (transformer; verifier not counted)")
  ax.set_ylabel(f"{block['metric']} (lower is better; bars: 95% interval)")
  n = block.get("num_images")
  ax.set_title(f"Sampling frontier: {block['metric']} vs sampling FLOPs"
               + (f" ({n} images per configuration)" if isinstance(n, int) else ""))
  ax.grid(True, which="both", alpha=0.25)
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
            frameon=False)
  return _save(fig, path)


# ---------------------------------------------------------------- text

def _protocol_text(b: dict) -> str:
  p = b.get("protocol", {})
  parts = []
  if "cfg" in p:
    parts.append(f"cfg {p['cfg']}")
  if "top_k" in p:
    parts.append(f"top-k {p['top_k']}")
  if "top_p" in p:
    parts.append(f"top-p {p['top_p']}")
  if "seed" in p:
    parts.append(f"seed {p['seed']}")
  ref = p.get("reference_dataset")
  if ref:
    parts.append(f"reference {ref}" + (f" {p['reference_split']}" if p.get("reference_split")
                                       else "")
                 + (f" ({p['reference_count']} images)" if p.get("reference_count") else ""))
  return ", ".join(str(x) for x in parts)


def section(block: dict) -> list[str]:
  """report.md lines for the sampling frontier."""
  from analysis.report_md import _table, notes_and_figure, num, with_interval
  rows, metric = block["configs"], block["metric"]
  n = block.get("num_images")
  samplers = {r["sampler"] for r in rows}
  kinds = [w for s, w in (("plain", "plain sampling"),
                          ("collaborative", "collaborative drafter > refiner sampling"),
                          ("best_of_k", "best-of-K with a verifier")) if s in samplers]
  boots = block.get("protocol", {}).get("quality_bootstrap")
  lines = [
      f"{len(rows)} sampler configurations ({', '.join(kinds)}) measured by `varjax eval "
      f"sampling` ({os.path.basename(block['source'])}): {metric} of "
      + (f"{n} images each" if n else "each configuration's images")
      + (f", {_protocol_text(block)}" if _protocol_text(block) else "")
      + ". Intervals: 95% bootstrap over each configuration's sample set"
      + (f" ({boots} resamples)" if boots else "")
      + ", the noise of a finite sample, not the seed-to-seed spread of the models; two "
      "configurations whose intervals overlap are not ranked. FLOPs: the transformer's exact "
      "sampling FLOPs per image; 'with verifier' adds best-of-K's K verifier calls.", ""]
  lines += _table(
      ["configuration", "sampler", "switch / K", "sampling FLOPs/image",
       "FLOPs/image with verifier", f"{metric} [95%]", "images/s", "verifier score",
       "Pareto"],
      [[r["config"], r["sampler"].replace("_", "-"),
        (f"@{r['switch_scale']}" if r["sampler"] == "collaborative" else
         f"K={r['k']}" if r["sampler"] == "best_of_k" else "–"),
        num(r["sampling_flops_per_image"]), num(r["total_flops_per_image"]),
        with_interval(r["quality"], r["quality_interval_95"]), num(r["images_per_s"]),
        num(r["verifier_score"]), "yes" if r["pareto"] else ""]
       for r in sorted(rows, key=lambda r: r["sampling_flops_per_image"])])
  by = {r["config"]: r for r in rows}
  best = by[block["best"]]
  lines += ["", f"Pareto set on (sampling FLOPs per image, {metric}), point estimates: "
            + ", ".join(block["pareto"]) + f". The best {metric} is {best['config']} "
            f"{with_interval(best['quality'], best['quality_interval_95'])}."]
  c = block.get("cheapest_within_noise")
  if c:
    if c["config"] == c["best"]:
      lines[-1] += (f" No configuration of fewer sampling FLOPs is within its interval.")
    else:
      lines[-1] += (f" The cheapest configuration within its interval is {c['config']} "
                    f"{with_interval(c['quality'], c['quality_interval_95'])} at "
                    f"{num(c['sampling_flops_per_image'])} sampling FLOPs per image, "
                    f"{num(c['flop_saving_vs_best'])}x fewer: the table cannot tell the two "
                    "apart.")
  for s in block["collaborative"]:
    if s["drafter_config"] is None:
      continue
    pts = s["points"]
    lines += ["", f"Collaborative {s['drafter']} > {s['refiner']} against {s['drafter']} "
              f"alone ({with_interval(s['drafter_quality'], s['drafter_interval_95'])} at "
              f"{num(s['drafter_flops_per_image'])} FLOPs per image); switch k: the drafter "
              "samples the scales before k, the refiner the rest" + (
                  " (@0 is the refiner alone)" if any(p["refiner_alone"] for p in pts) else "")
              + ":", ""]
    lines += _table(["switch", "sampling FLOPs/image", "FLOP saving", f"{metric} [95%]",
                     f"change vs {s['drafter']}", "within its interval"],
                    [[f"@{p['switch_scale']}", num(p["sampling_flops_per_image"]),
                      f"{num(p['flop_ratio'])}x",
                      with_interval(p["quality"], p["quality_interval_95"]),
                      f"{p['quality_change']:+.3g}",
                      {True: "yes", False: "no", None: "–"}[p["within_drafter_interval"]]]
                     for p in pts])
  for s in block["best_of_k"]:
    pts = s["points"]
    lines += ["", f"Best-of-K of {s['run']} (K = 1 is plain sampling):", ""]
    lines += _table(["K", "sampling FLOPs/image", "with verifier", f"{metric} [95%]",
                     "change vs K = 1", "verifier score", "coverage"],
                    [[str(p["k"]), num(p["sampling_flops_per_image"]),
                      num(p["total_flops_per_image"]),
                      with_interval(p["quality"], p["quality_interval_95"]),
                      "–" if p["quality_change"] is None or p["k"] == 1
                      else f"{p['quality_change']:+.3g}",
                      num(p["verifier_score"]), num(p["coverage"])] for p in pts])
  v = block.get("verifier_note")
  if v:
    lines += ["", f"**Verifier.** {v['text']}"]
  return lines + notes_and_figure(block, "sampling frontier")


def summary_lines(block: dict) -> list[str]:
  """One to three lines for the report's text output."""
  from analysis.report_md import num, with_interval
  by = {r["config"]: r for r in block["configs"]}
  best = by[block["best"]]
  metric = block["metric"]
  line = (f"sampling frontier: {len(by)} configurations, Pareto {', '.join(block['pareto'])};"
          f" best {best['config']} {with_interval(best['quality'], best['quality_interval_95'])}")
  c = block.get("cheapest_within_noise")
  if c and c["config"] != c["best"]:
    line += (f", {c['config']} within its interval at {num(c['flop_saving_vs_best'])}x fewer "
             "sampling FLOPs")
  out = [line]
  collab = [s for s in block["collaborative"] if s["drafter_config"] is not None]
  if collab:
    s = max(collab, key=lambda s: len(s["points"]))
    pts = s["points"]
    within = all(p["within_drafter_interval"] for p in pts)
    out.append(f"sampling frontier: {s['drafter']} > {s['refiner']} at "
               f"{', '.join('@' + str(p['switch_scale']) for p in pts)}: "
               f"{_range([p['flop_ratio'] for p in pts])} fewer sampling FLOPs than "
               f"{s['drafter']} alone, {metric} change "
               + ", ".join(f"{p['quality_change']:+.3g}" for p in pts)
               + ("; within its interval at every switch (not ranked)" if within else ""))
  bok = [s for s in block["best_of_k"] if s["k1_config"] is not None and len(s["points"]) > 1]
  if bok:
    s = max(bok, key=lambda s: len(s["points"]))
    one, last = s["points"][0], s["points"][-1]
    v = block.get("verifier_note") or {}
    caveat = ("the verifier is the fd network: no evidence" if v.get("same_network") else
              "an upper bound (verifier trained on the same data)")
    total = last["total_flops_per_image"]
    out.append(f"sampling frontier: {s['run']} best-of-{last['k']}: {metric} "
               f"{num(one['quality'])} -> {num(last['quality'])} at "
               f"{num(last['sampling_flops_per_image'] / one['sampling_flops_per_image'])}x "
               "the sampling FLOPs"
               + (f" ({num(total / one['sampling_flops_per_image'])}x with the verifier)"
                  if total else "") + f"; {caveat}")
  return out
