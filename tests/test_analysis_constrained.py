"""The data-constrained law (Muennighoff et al. 2023): its published values through
`predict`, effective epochs, a refit of data drawn from it, law files (`fit --save`,
`forecast/plan --law-file`), the data-limited plan, and one-line refusals."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from analysis import constrained, laws, pipeline
from analysis.cli import main
from test_analysis_cli import run_cli

# The paper's fit, as published (its parameters are fitted as logs: A = e^6.255414).
PUBLISHED = {"E": "e^0.6254804", "A": "e^6.255414", "B": "e^7.3049974", "alpha": "0.3526596",
             "beta": "0.3526596", "rd_star": "15.387756", "rn_star": "5.309743"}
PARAMS = {k: float(np.exp(float(v[2:]))) if v.startswith("e^") else float(v)
          for k, v in PUBLISHED.items()}
# (N, D, U) -> the loss the law gives there with PUBLISHED (issue 18's reference values).
REFERENCE = [((6.34e9, 242e9, 25e9), 2.2256440889984477),
             ((8.67e9, 178e9, 25e9), 2.2269634075087867)]
PARAMS_ARG = ",".join(f"{k}={v}" for k, v in PUBLISHED.items())


def main_json(*argv) -> dict:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    rc = main([str(a) for a in argv])
  assert rc == 0
  return json.loads(out.getvalue())


def refused(capsys, *argv) -> str:
  rc, out, err = run_cli(capsys, *argv)
  assert rc == 2 and not out, (rc, out, err)
  assert err.startswith("analysis: error: ") and err.count("\n") == 1, err
  return err


def test_predict_reproduces_the_published_values():
  at = [f"N={n:g},D={d:g},U={u:g}" for (n, d, u), _ in REFERENCE]
  report = main_json("predict", "--law", "data_constrained", "--params", PARAMS_ARG,
                     "--at", at[0], "--at", at[1], "--json")
  assert report["law"] == "data_constrained" and len(report["predict"]) == 2
  for row, ((n, d, u), loss) in zip(report["predict"], REFERENCE):
    assert (row["N"], row["D"], row["U"]) == (n, d, u)
    assert abs(row["loss"] - loss) < 1e-9
    assert row["repetition"]["epochs"] == pytest.approx(d / u)
  # The same numbers from plain floats, and from the library.
  plain = ",".join(f"{k}={v!r}" for k, v in PARAMS.items())
  again = main_json("predict", "--law", "data_constrained", "--params", plain, "--at", at[0],
                    "--json")
  assert abs(again["predict"][0]["loss"] - REFERENCE[0][1]) < 1e-9
  n, d, u = (np.array([p[i] for p, _ in REFERENCE]) for i in range(3))
  np.testing.assert_allclose(constrained.loss(PARAMS, n, d, u), [v for _, v in REFERENCE],
                             rtol=0, atol=1e-9)


def test_effective_epochs_closed_form():
  rd_star = PARAMS["rd_star"]
  assert constrained.effective_epochs(4, rd_star) == pytest.approx(3.7, abs=0.05)
  assert constrained.effective_epochs(1, rd_star) == 1.0
  assert constrained.effective_epochs(1e6, rd_star) == pytest.approx(rd_star + 1, rel=1e-12)
  assert rd_star + 1 == pytest.approx(16.4, abs=0.05)
  rep = constrained.repetition(PARAMS, 1e8, 4e9, 1e9)
  assert rep["effective_epochs"] == pytest.approx(constrained.effective_epochs(4, rd_star))
  assert rep["repeated_token_worth"] == pytest.approx(np.exp(-3 / rd_star))
  # With U = D the law is Chinchilla's (for N <= N_opt(D)).
  n, d = 1e8, 2e10
  assert n < constrained.n_opt_for_unique(PARAMS, d)
  chin = laws.CHINCHILLA.predict(laws.CHINCHILLA.from_public(PARAMS),
                                 {"N": np.array([n]), "D": np.array([d])})[0]
  assert constrained.loss(PARAMS, n, d, d) == pytest.approx(chin, rel=1e-12)


def synthetic_runs(seed=0, noise=0.005) -> pd.DataFrame:
  """Runs drawn from the published law with log-normal noise: 4 sizes x 3 data sets x 7
  epoch counts (0.5 to 40; a run under one epoch trains on D unique tokens)."""
  n, pool, epochs = (a.ravel() for a in np.meshgrid(
      np.geomspace(1e8, 3e9, 4), [1e9, 4e9, 1.6e10], [0.5, 1, 2, 4, 8, 16, 40], indexing="ij"))
  d = pool * epochs
  u = np.minimum(pool, d)
  loss = constrained.loss(PARAMS, n, d, u)
  loss = loss * np.exp(np.random.default_rng(seed).normal(0, noise, n.shape))
  return pd.DataFrame({"params": n, "tokens": d, "unique": u, "loss": loss})


AT = "N=1e9,D=4e10,U=1e10"


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
  """`fit --law data_constrained --save` on synthetic runs: (its report, law file, CSV)."""
  root = tmp_path_factory.mktemp("constrained")
  csv = root / "runs.csv"
  synthetic_runs().to_csv(csv, index=False)
  law_file = root / "law.json"
  report = main_json("fit", "--law", "data_constrained", "--csv", csv, "--d-col", "tokens",
                     "--u-col", "unique", "--bootstrap", "20", "--no-backtest", "--at", AT,
                     "--save", law_file, "--json")
  return report, str(law_file), str(csv)


def test_refit_recovers_rd_star_inside_its_interval(saved_fit):
  report, _, _ = saved_fit
  assert report["law"] == "data_constrained" and report["converged"]
  lo, hi = report["intervals_95"]["rd_star"]
  assert lo <= PARAMS["rd_star"] <= hi
  assert report["rd_star"] == pytest.approx(PARAMS["rd_star"], rel=0.2)
  for name in ("alpha", "beta"):
    assert report[name] == pytest.approx(PARAMS[name], rel=0.1)
  row = report["predict"][0]
  assert row["U"] == 1e10 and row["repetition"]["epochs"] == 4.0
  assert 3.5 < row["repetition"]["effective_epochs"] < 4.0
  assert row["repetition"]["gain_if_unique"] > 0
  assert not any("R_D*" in w for w in report.get("warnings", []))


def test_law_file_forecast_equals_the_fit_without_refitting(saved_fit, monkeypatch):
  report, law_file, _ = saved_fit
  def no_fit(*args, **kwargs):
    raise AssertionError("--law-file refitted")
  from analysis import fitting, uncertainty
  for module, name in ((fitting, "minimize_law"), (uncertainty, "minimize_law"),
                       (pipeline, "fit_report")):
    monkeypatch.setattr(module, name, no_fit)
  forecast = main_json("forecast", "--law-file", law_file, "--at", AT, "--json")
  assert forecast["predict"][0] == report["predict"][0]  # bit for bit, interval included
  assert forecast["law_file"] == law_file and forecast["rd_star"] == report["rd_star"]


def test_plan_with_unique_tokens(saved_fit):
  _, law_file, _ = saved_fit
  flops, unique = 1e21, 1e10
  limited = main_json("plan", "--law-file", law_file, "--flops", flops, "--unique-tokens",
                      unique, "--json")
  free = main_json("plan", "--law-file", law_file, "--flops", flops, "--json")
  assert limited["U"] == unique and limited["data_limit"]["best"]["D"] == limited["D_opt"]
  assert limited["D_opt"] <= 40 * unique  # repeats, but within the law's useful range
  # Excess parameters lose value faster than repeated tokens (R_N* < R_D*): the law spends
  # a data-limited budget on more epochs, fewer parameters (the paper's 6.34B on 242B
  # tokens against Chinchilla's 8.67B on 178B).
  assert limited["D_opt"] > free["D_opt"] and limited["N_opt"] < free["N_opt"]
  assert 6 * limited["N_opt"] * limited["D_opt"] == pytest.approx(flops)
  # The unconstrained plan, trained on these `unique` tokens, is no better under the law.
  with open(law_file) as f:
    params = json.load(f)["params"]
  free_under_limit = constrained.loss(params, free["N_opt"], free["D_opt"],
                                      min(unique, free["D_opt"]))
  assert limited["loss"] <= free_under_limit
  limit = limited["data_limit"]
  assert limit["epochs_gain"] > 0 and limit["more_data_gain"] > 0
  assert limit["one_epoch"]["D"] == unique
  assert limited["repetition"]["epochs"] == pytest.approx(limited["D_opt"] / unique)


def test_auto_adds_data_constrained_only_when_u_is_known(saved_fit):
  table = pd.read_csv(saved_fit[2])
  n, d = table["params"].to_numpy(), table["tokens"].to_numpy()
  args = type("Args", (), {"law": "auto", "at": [], "unique_tokens": None})()
  known = pipeline.Data(table, {"N": n, "D": d}, table["loss"].to_numpy(), None,
                        table["unique"].to_numpy())
  unknown = pipeline.Data(table, {"N": n, "D": d}, table["loss"].to_numpy(), None, None)
  assert pipeline.law_names(args, known, ["chinchilla"]) == ["chinchilla", "data_constrained"]
  assert pipeline.law_names(args, unknown, ["chinchilla"]) == ["chinchilla"]
  # A registry's unique_tokens counts a data set's distinct tokens an epoch: a run shorter
  # than an epoch trains on D unique tokens.
  epoch = pipeline.unique_tokens(pd.DataFrame({"unique_tokens": [4e9] * len(d)}), d)
  u = pipeline.law_inputs(laws.DATA_CONSTRAINED, pipeline.Data(table, {"N": n, "D": d},
                                                               None, None, epoch))["U"]
  np.testing.assert_array_equal(u, np.minimum(4e9, d))


def test_refusals(capsys, saved_fit, tmp_path):
  _, law_file, csv = saved_fit
  predict = ("predict", "--law", "data_constrained", "--params", PARAMS_ARG)
  assert "U = 3e+10 exceeds D = 2e+10" in refused(capsys, *predict, "--at", "N=1e9,D=2e10,U=3e10")
  assert "needs U" in refused(capsys, *predict, "--at", "N=1e9,D=2e10")
  err = refused(capsys, "predict", "--law", "data_constrained", "--params",
                PARAMS_ARG + ",gamma=1", "--at", "N=1e9,D=2e10,U=1e10")
  assert "unknown gamma" in err and "rd_star" in err
  err = refused(capsys, "predict", "--law", "data_constrained", "--params", "E=1.5,A=400",
                "--at", "N=1e9,D=2e10,U=1e10")
  assert "missing B, alpha, beta, rd_star, rn_star" in err
  assert "unknown law" in refused(capsys, "predict", "--law", "nope", "--params", "E=1",
                                  "--at", "N=1,D=1")
  # Data: U over D in --u-col, and no U at all.
  table = pd.read_csv(csv)
  table.loc[3, "unique"] = 2 * table.loc[3, "tokens"]
  table.to_csv(tmp_path / "over.csv", index=False)
  err = refused(capsys, "fit", "--law", "data_constrained", "--csv", tmp_path / "over.csv",
                "--d-col", "tokens", "--u-col", "unique")
  assert "exceeds the tokens D in 1 CSV line(s): 5" in err
  table.drop(columns="unique").to_csv(tmp_path / "no_u.csv", index=False)
  err = refused(capsys, "fit", "--law", "data_constrained", "--csv", tmp_path / "no_u.csv",
                "--d-col", "tokens")
  assert "needs each run's unique tokens U" in err
  err = refused(capsys, "forecast", "--law-file", law_file, "--at", "N=1e9,D=4e10")
  assert "needs the unique tokens U" in err
  # Law files: not JSON, JSON but not a law file, missing, and with data flags.
  (tmp_path / "bad.json").write_text("{not json")
  (tmp_path / "other.json").write_text(json.dumps({"law": "chinchilla"}))
  for name in ("bad.json", "other.json"):
    err = refused(capsys, "forecast", "--law-file", tmp_path / name, "--at", AT)
    assert "not a law file" in err
  assert "no such file" in refused(capsys, "plan", "--law-file", tmp_path / "none.json",
                                   "--flops", "1e21")
  err = refused(capsys, "forecast", "--law-file", law_file, "--csv", csv, "--at", AT)
  assert "drop --csv" in err
