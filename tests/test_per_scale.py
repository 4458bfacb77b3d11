"""VAR's per-scale laws (analysis/per_scale.py): the power-law fit against the law that drew
the data, VAR's published law in closed form, the run selection against brute force, the
trainer's eval metrics as registry columns against NumPy, and the report's section."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from analysis import load_runs, per_scale, pipeline, report, report_md


def test_var_published_law_in_closed_form():
  # L_last = (2.0 N)^-0.23 with N in billions (Tian et al. 2024): at N = 1e9 parameters,
  # 2.0^-0.23 = exp(-0.23 ln 2) = 0.85263.
  x = 1e9 / per_scale.N_UNIT
  beta, alpha = per_scale.VAR_PUBLISHED_VS_N["loss_last"]
  assert per_scale.power_law(x, alpha, beta) == pytest.approx(np.exp(-0.23 * np.log(2.0)))
  assert per_scale.power_law(x, alpha, beta) == pytest.approx(0.8526, abs=5e-5)
  beta, alpha = per_scale.VAR_PUBLISHED_VS_N["loss_avg"]
  assert per_scale.power_law([1.0, 10.0], alpha, beta) == pytest.approx(
      [2.5 ** -0.2, 25.0 ** -0.2])


def test_fit_recovers_the_generating_law():
  x = np.geomspace(0.05, 20, 12)
  exact = per_scale.fit_power_law(x, (2.0 * x) ** -0.23)
  assert exact.alpha == pytest.approx(-0.23, abs=1e-12)
  assert exact.beta == pytest.approx(2.0, rel=1e-10)
  assert exact.r == pytest.approx(-1.0) and exact.num_runs == 12
  rng = np.random.default_rng(0)
  noisy = per_scale.fit_power_law(x, (2.0 * x) ** -0.23 * np.exp(rng.normal(0, 0.01, 12)))
  assert noisy.alpha == pytest.approx(-0.23, abs=0.01)
  assert noisy.beta == pytest.approx(2.0, rel=0.15)
  assert noisy.alpha_interval_95[0] < -0.23 < noisy.alpha_interval_95[1]
  assert noisy.beta_interval_95[0] < 2.0 < noisy.beta_interval_95[1]


def test_a_flat_metric_is_said_to_resolve_no_trend():
  """y with no dependence on x (alpha = 0, noise of 1%): the 95% interval of alpha holds 0,
  the block's notes and the findings say no trend is resolved; the generating law's fit
  (alpha = -0.23) is not named."""
  import dataclasses
  x = np.geomspace(0.05, 20, 6)
  flat = per_scale.fit_power_law(x, 4.5 * np.array([1.01, 0.99, 1.0, 1.01, 0.99, 1.0]))
  steep = per_scale.fit_power_law(x, (2.0 * x) ** -0.23 * np.array([1.01, 0.99, 1, 1, 1, 1]))
  fits = [{"metric": "loss_last", "x": "N", **dataclasses.asdict(flat)},
          {"metric": "loss_avg", "x": "N", **dataclasses.asdict(steep)}]
  assert fits[0]["alpha_interval_95"][0] < 0 < fits[0]["alpha_interval_95"][1]
  assert not per_scale.resolved(fits[0]) and per_scale.resolved(fits[1])
  (note,) = per_scale.unresolved_notes(fits)
  assert note.startswith("alpha's 95% interval includes 0 for loss_last vs N:")
  assert "loss_avg" not in note
  (finding,) = report_md.per_scale_findings({"fits": fits})
  assert "the last scale's loss goes as N^" in finding
  assert finding.endswith("the interval of the last scale's loss includes 0: these runs resolve "
                          "no trend in N (the per-scale section says why).")
  assert per_scale.unresolved_notes(fits[1:]) == []
  text = report_md.summary({"law": "chinchilla", "formula": "L = E",
                            "per_scale": {"fits": fits}}, "r.md").splitlines()
  assert [line.endswith("(includes 0: no trend resolved)") for line in text
          if line.startswith("per-scale law")] == [True, False]
  # the same runs at one compute (an IsoFLOP budget) are said to be one
  iso = [dict(fits[0], compute_range=[2.0e11, 2.02e11])]
  assert "an IsoFLOP budget" in per_scale.unresolved_notes(iso)[0]
  spread = [dict(fits[0], compute_range=[5e10, 2e11])]
  assert "IsoFLOP" not in per_scale.unresolved_notes(spread)[0]


def test_intervals_cover_the_true_law_95_percent_of_the_time():
  # The OLS t-intervals are exact for log-normal noise: over 400 noisy draws of 6 runs,
  # alpha's covers -0.2 in 95% +- 2.2% (binomial sd 1.1%); beta's (delta method) near it.
  rng = np.random.default_rng(1)
  x = np.geomspace(0.1, 10, 6)
  fits = [per_scale.fit_power_law(x, (2.5 * x) ** -0.2 * np.exp(rng.normal(0, 0.02, 6)))
          for _ in range(400)]
  alpha_cover = np.mean([f.alpha_interval_95[0] < -0.2 < f.alpha_interval_95[1] for f in fits])
  beta_cover = np.mean([f.beta_interval_95[0] < 2.5 < f.beta_interval_95[1] for f in fits])
  assert 0.928 <= alpha_cover <= 0.972
  assert 0.9 <= beta_cover <= 0.99


def test_selection_final_runs_and_compute_frontier():
  n = np.array([1, 1, 1, 2, 2, 3.0])
  c = np.array([10, 20, 20.5, 20, 40, 40.0])
  assert per_scale.final_runs(n, c).tolist() == [False, True, True, False, True, True]
  rng = np.random.default_rng(2)
  c, y = rng.uniform(1, 100, 40), rng.uniform(1, 5, 40)
  c[5], y[5] = c[4], y[4] - 0.1  # a tie in C: only the lower y counts
  brute = [not np.any((c < c[i]) & (y <= y[i])) and not np.any((c == c[i]) & (y < y[i]))
           for i in range(40)]
  assert per_scale.compute_frontier(c, y).tolist() == brute


def _write_run(root, name: str, summary: dict) -> None:
  os.makedirs(os.path.join(root, name))
  with open(os.path.join(root, name, "config.json"), "w") as f:
    json.dump({}, f)
  with open(os.path.join(root, name, "summary.json"), "w") as f:
    json.dump(summary, f)


def test_trainer_eval_metrics_reach_the_registry_as_var_columns(tmp_path):
  """Crafted logits -> the eval's token_losses -> the trainer's summary.json -> load_runs:
  loss_last / err_last / loss_s<k> equal the cross-entropy and top-1 error computed here."""
  from varjax import config as config_lib, scales
  from varjax.models import losses
  from varjax.parallel import mesh as mesh_lib
  from varjax.train import accounting, rundir
  pn, v = (1, 2, 3), 11
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 14, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(4, 14))
  logits[0, 13, targets[0, 13]] += 10.0  # one sure hit on the last scale
  out = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets), pn)
  last_eval = {k: np.asarray(val).tolist() for k, val in out.items()} | {"examples": 4}
  cfg = config_lib.from_dict({"model": {"depth": 2, "width": 64, "heads": 2, "vocab_size": v,
                                        "patch_nums": list(pn)},
                              "data": {"global_batch_size": 4}, "run": {"steps": 10}})
  mesh = mesh_lib.make_mesh(cfg.mesh)
  summary = accounting.run_summary(cfg, accounting.accounting(cfg, mesh), last_eval,
                                   first_step=0, train_time=1.0, wall_time=1.0, mesh=mesh,
                                   tokenizer_dir="tok", train_examples=8)
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "config.json").write_text("{}")
  rundir.write_summary(str(tmp_path / "new"), summary)
  # An older VAR run (no tail, no per-scale values) and a run that is not VAR's at all.
  _write_run(tmp_path, "old", {"params": 1, "loss": 5.0, "token_error": 90.0})
  _write_run(tmp_path, "other", {"params": 1, "loss": 0.1})
  table = load_runs(str(tmp_path)).set_index("run")

  logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  wrong = logits.argmax(-1) != targets
  last = slice(scales.boundaries(pn)[-2], None)
  new = table.loc["new"]
  assert new["loss_last"] == pytest.approx(ce[:, last].mean(), rel=1e-5)
  assert new["err_last"] == pytest.approx(wrong[:, last].mean(), rel=1e-6)
  assert new["loss_avg"] == pytest.approx(ce.mean(), rel=1e-5)
  assert new["err_avg"] == pytest.approx(wrong.mean(), rel=1e-6)
  for k, (lo, hi) in enumerate(zip(scales.boundaries(pn), scales.boundaries(pn)[1:])):
    assert new[f"loss_s{k}"] == pytest.approx(ce[:, lo:hi].mean(), rel=1e-5)
  assert table.loc["old", "loss_avg"] == 5.0 and table.loc["old", "err_avg"] == 0.9
  assert np.isnan(table.loc["old", ["loss_last", "err_last", "loss_s0"]].astype(float)).all()
  assert np.isnan(table.loc["other", ["loss_avg", "err_avg"]].astype(float)).all()


def var_registry(root) -> pd.DataFrame:
  """Five sizes at three budgets; the largest budget's runs follow VAR's published laws vs
  N exactly (errors: (490 N)^-0.016 as a stand-in), the smaller ones 5% and 10% above."""
  n = np.geomspace(1e8, 2e9, 5)
  for i, params in enumerate(n):
    for budget, worse in ((1e20, 1.1), (2e20, 1.05), (4e20, 1.0)):
      nb = params / 1e9
      last, avg = (2.0 * nb) ** -0.23 * worse, (2.5 * nb) ** -0.2 * worse
      err = (490 * nb) ** -0.016 * worse
      _write_run(root, f"n{i}-C{budget:.0e}", {
          "params": params, "tokens": budget / (6 * params), "loss": avg,
          "token_error": 100 * err, "loss_tail": last, "token_error_tail": 100 * err,
          "loss_per_scale": [0.5 * last, last]})
  return load_runs(str(root))


def _data(table: pd.DataFrame) -> pipeline.Data:
  inputs = {"N": table["params"].to_numpy(float), "D": table["tokens"].to_numpy(float)}
  return pipeline.Data(table, inputs, table["loss"].to_numpy(float), None, None)


def test_report_block_recovers_var_laws_from_a_registry_and_renders(tmp_path):
  table = var_registry(tmp_path / "runs")
  block = report.per_scale_block(_data(table), str(tmp_path))
  fits = {(f["metric"], f["x"]): f for f in block["fits"]}
  assert set(fits) == {(m, x) for m in (*per_scale.MAIN, "loss_s0", "loss_s1") for x in "NC"}
  for metric, (beta, alpha) in per_scale.VAR_PUBLISHED_VS_N.items():
    f = fits[(metric, "N")]
    assert f["num_runs"] == 5 and all(r.endswith("C4e+20") for r in f["runs"])
    assert f["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert f["beta"] == pytest.approx(beta, rel=1e-7)
  assert fits[("err_last", "N")]["beta"] == pytest.approx(490, rel=1e-6)
  c = 6 * table["params"].to_numpy() * table["tokens"].to_numpy()
  y = table["loss_last"].to_numpy()
  frontier = per_scale.compute_frontier(c, y)  # here the best run of each budget
  assert fits[("loss_last", "C")]["num_runs"] == frontier.sum() == 3
  assert sorted(fits[("loss_last", "C")]["runs"]) == sorted(table["run"][frontier])
  assert os.path.getsize(block["plot"]) > 10_000
  assert block["notes"] == []

  rendered = report_md.render({"law": "chinchilla", "formula": "L = E", "num_points": 10,
                               "num_starts": 1, "per_scale": report.pipeline.jsonable(block)})
  section = rendered.split(f"## {report_md.PER_SCALE}\n\n")[1].split("\n## ")[0]
  assert "`loss_last = (2 N)^-0.23`" in section  # VAR's, then ours (the same here)
  assert "| loss_last | N | -0.23 [-0.23, -0.23] | 2 [2, 2] | -1 | 5 |" in section
  assert "| scale | alpha vs N [95%], r | alpha vs C [95%], r |" in section
  assert "![per scale](per_scale.png)" in section
  assert "the last scale's loss goes as N^-0.23 [-0.23, -0.23] (VAR: -0.23)" in rendered


def test_report_block_without_var_metrics_is_one_sentence(tmp_path):
  table = pd.DataFrame({"run": ["a", "b", "c"], "params": [1e6, 2e6, 4e6],
                        "tokens": [1e8, 1e8, 1e8], "loss": [4.0, 3.9, 3.8]})
  block = report.per_scale_block(_data(table), str(tmp_path))
  sentence = block["skipped"]
  assert set(block) == {"skipped"} and sentence.endswith(".") and ". " not in sentence
  md = report_md.per_scale_section({"per_scale": block})
  assert md == [block["skipped"]]
  # Two runs only: each law is skipped with one line, nothing is drawn.
  table = var_registry(tmp_path / "two")
  table = table[table["run"].str.endswith("C4e+20")].iloc[:2]
  block = report.per_scale_block(_data(table), str(tmp_path))
  assert "plot" not in block and all("skipped" in f for f in block["fits"])
  assert block["notes"][0].startswith("loss_last vs N: 2 run(s) with 2 distinct N selected")
