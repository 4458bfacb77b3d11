"""analysis/sampling.py: the saturating quality law and exp(a K^b) coverage recovered from
synthetic data; the planner's choice and cost split on a hand-made sampling table; an
unreachable target and bad input in one line."""

import csv
import json

import numpy as np
import pytest

from analysis import sampling
from analysis.validate import AnalysisError
from test_analysis_cli import run_cli
from varjax.eval.sampling_table import COLUMNS


def law(f, q_inf=2.0, a=50.0, alpha=0.5, f0=1e9):
  return q_inf + a * (np.asarray(f) / f0) ** -alpha


def test_saturating_law_recovered():
  f = np.geomspace(1e8, 1e12, 12)
  exact = sampling.fit_quality(f, law(f), bootstrap=0)
  # A is reported at F0, the geometric mean of F: convert the truth to it
  assert exact.q_inf == pytest.approx(2.0, rel=1e-5)
  assert exact.alpha == pytest.approx(0.5, rel=1e-5)
  assert exact.A * (exact.F0 / 1e9) ** exact.alpha == pytest.approx(50.0, rel=1e-4)
  rng = np.random.default_rng(0)
  noisy = law(f) * np.exp(0.02 * rng.standard_normal(len(f)))
  fit = sampling.fit_quality(f, noisy, bootstrap=100, seed=1)
  assert fit.q_inf == pytest.approx(2.0, abs=0.3) and fit.alpha == pytest.approx(0.5, abs=0.05)
  iv = fit.intervals()
  assert iv["q_inf"][0] <= 2.0 <= iv["q_inf"][1] and iv["alpha"][0] <= 0.5 <= iv["alpha"][1]
  lo, hi = fit.prediction_interval(1e10)
  assert lo < law(1e10) < hi
  with pytest.raises(AnalysisError, match="needs >= 4 points at >= 3 sampling costs"):
    sampling.fit_quality([1, 1, 2, 2], [3, 3, 2, 2])


def test_coverage_law_recovered():
  k = np.array([1, 2, 4, 8, 16, 32, 64])
  c = np.exp(-0.8 * k ** -0.6)
  fit = sampling.fit_coverage(k, c)
  assert fit.a == pytest.approx(-0.8, rel=1e-9) and fit.b == pytest.approx(-0.6, rel=1e-9)
  assert fit.samples_for(0.9) == pytest.approx((np.log(0.9) / -0.8) ** (1 / -0.6))
  rng = np.random.default_rng(0)
  noisy = np.exp(-0.8 * k ** -0.6 * np.exp(0.03 * rng.standard_normal(len(k))))
  fit = sampling.fit_coverage(np.append(k, 128), np.append(noisy, 1.0))  # c = 1 is dropped
  assert fit.dropped == 1 and fit.interval_a[0] <= -0.8 <= fit.interval_a[1]
  assert fit.interval_b[0] <= -0.6 <= fit.interval_b[1]
  with pytest.raises(AnalysisError, match="K must be >= 1"):
    sampling.fit_coverage([0, 1], [0.5, 0.6])


ROWS = [  # config, sampler, k, train FLOPs, fd [low, high], FLOPs/image (sampling, total)
    ("small", "plain", 1, 1e15, 30.0, 28.0, 32.0, 1e9, 1e9),
    ("small best-of-4", "best_of_k", 4, 1e15, 19.0, 18.0, 20.5, 4e9, 4.5e9),
    ("big", "plain", 1, 1e16, 18.0, 17.5, 19.0, 8e9, 8e9),
    ("small>big@3", "collaborative", 1, 1.1e16, 19.8, 19.5, 21.5, 3e9, 3e9),
    ("big best-of-2", "best_of_k", 2, 1e16, 15.0, 14.0, 16.0, 1.6e10, 1.65e10),
]


def write_table(path, rows=ROWS):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    for config, sampler, k, train, q, lo, hi, fs, ft in rows:
      w.writerow({"config": config, "sampler": sampler, "run": config.split()[0], "k": k,
                  "train_flops": train, "metric": "fd_embed32cnn", "quality": q,
                  "quality_low": lo, "quality_high": hi, "sampling_flops_per_image": fs,
                  "total_flops_per_image": ft, "images_per_s": 1000.0, "device": "cpu",
                  "coverage": 0.5 if sampler == "best_of_k" else ""})
  return path


def test_plan_picks_the_cheapest_and_splits_its_cost(tmp_path, capsys):
  table = write_table(tmp_path / "t.csv")
  m = 1e6
  # fd <= 20 is reached by small best-of-4 (1e15 + 4.5e15), small>big@3 (1.1e16 + 3e15),
  # big (1e16 + 8e15) and big best-of-2; the cheapest is small best-of-4
  rc, out, err = run_cli(capsys, "plan", "--sampling-table", table, "--images", m,
                         "--target-fd", "20", "--accelerator", "h100", "--mfu", "0.5", "--json")
  assert rc == 0, err
  r = json.loads(out)
  assert r["reachable"] and r["choice"]["config"] == "small best-of-4"
  assert r["choice"]["quality_interval_95"] == [18.0, 20.5]
  assert r["choice"]["interval_source"] == "samples"
  cost = r["cost"]
  assert cost["training_flops"] == 1e15 and cost["sampling_flops"] == m * 4.5e9
  assert cost["total_flops"] == 1e15 + 4.5e15
  assert cost["sampling_share"] == pytest.approx(4.5 / 5.5)
  assert cost["training_hours"] == pytest.approx(1e15 / (989e12 * 0.5) / 3600)
  assert cost["sampling_hours"] == pytest.approx(4.5e15 / (989e12 * 0.5) / 3600)
  assert cost["sampling_hours_measured"] == pytest.approx(m / 1000 / 3600)
  # low end: small best-of-4 (18.0); high end: its 20.5 and small>big@3's 21.5 miss, the
  # cheapest surely reaching is big (1.8e16)
  assert r["cost_interval_95"]["low"]["config"] == "small best-of-4"
  assert r["cost_interval_95"]["high"] == {"config": "big", "total_flops": 1e16 + 8e15}
  assert r["quality_fit"]["points"] == 5
  rc, out, _ = run_cli(capsys, "plan", "--sampling-table", table, "--images", m,
                       "--target-fd", "20")
  assert rc == 0 and out.startswith("target: fd_embed32cnn <= 20 for 1e+06 images")
  assert "choice: small best-of-4 (best_of_k, K 4): fd_embed32cnn 19" in out
  assert "training 1e+15 + sampling 4.5e+15" in out
  # more images make sampling dominate: at 1e9 the collaborative sampler's fewer FLOPs per
  # image pay for the big model's training
  rc, out, _ = run_cli(capsys, "plan", "--sampling-table", table, "--images", "1e9",
                       "--target-fd", "20", "--json")
  assert json.loads(out)["choice"]["config"] == "small>big@3"  # 1.1e16 + 3e18 < 1e15 + 4.5e18


def test_unreachable_and_bad_input_are_one_line(tmp_path, capsys):
  table = write_table(tmp_path / "t.csv")
  rc, out, err = run_cli(capsys, "plan", "--sampling-table", table, "--images", "1e6",
                         "--target-fd", "10")
  assert rc == 0 and len(out.strip().splitlines()) == 1, out
  assert out.startswith("unreachable: no candidate reaches fd_embed32cnn <= 10; the best is "
                        "big best-of-2 at 15")
  bad = write_table(tmp_path / "bad.csv", [*ROWS, ("x best-of-0", "best_of_k", 0, 1e15, 9.0,
                                                    8.0, 10.0, 0.0, 0.0)])
  for argv, message in (
      (["--sampling-table", bad, "--images", "1e6", "--target-fd", "20"], "K must be >= 1"),
      (["--sampling-table", table, "--images", "1e6"], "--images M needs a target"),
      (["--sampling-table", table, "--target-fd", "20"], "add --images M"),
      (["--sampling-table", table, "--images", "1e6", "--target-fd", "20", "--flops", "1e20"],
       "not both"),
      (["--images", "1e6", "--target-fd", "20"], "give one"),
      (["--sampling-table", table, "--images", "1e6", "--target-fid", "20"],
       "no candidate has a fid measurement"),
      (["--sampling-table", tmp_path / "none.csv", "--images", "1e6", "--target-fd", "2"],
       "no such file"),
      (["--sampling-table", table, "--images", "-1", "--target-fd", "2"], "positive"),
      (["--sampling-table", table, "--images", "1", "--target-fd", "2", "--target-fid", "2"],
       "not allowed with"),
  ):
    rc, out, err = run_cli(capsys, "plan", *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, (argv, err)


def test_registry_runs_are_plain_candidates(tmp_path, capsys):
  """Runs with fd in summary.json: plain sampling at their config's exact FLOPs per image
  (guided unless the recorded protocol says cfg 0), intervals from the quality fit."""
  from varjax import config
  from varjax.config import ModelConfig
  from varjax.models.sampling_cost import sampling_cost
  models = {}
  for i, width in enumerate((16, 32, 48, 64, 96)):
    model = ModelConfig(depth=2, width=width, heads=4, vocab_size=23, latent_channels=8,
                        num_classes=5, patch_nums=(1, 2, 3, 4))
    run = tmp_path / "reg" / f"w{width}"
    run.mkdir(parents=True)
    config.replace(config.Config(), model=config.to_dict(model)).save(str(run / "config.json"))
    (run / "params.msgpack").write_bytes(b"")  # never read
    cfg = 0.0 if width == 16 else 1.5
    (run / "summary.json").write_text(json.dumps({
        "params": 1e4 * (i + 1), "tokens": 1e6, "flops_exact": 1e11 * (i + 1), "loss": 4.0,
        "fd_tiny": float(law(sampling_cost(model, guided=cfg > 0)["total"], 5, 20, 0.4, 1e6)),
        "sample_protocol": {"metric": "fd_tiny", "cfg": cfg}}))
    models[width] = (model, cfg)
  want = law(sampling_cost(models[48][0], guided=True)["total"], 5, 20, 0.4, 1e6)
  rc, out, err = run_cli(capsys, "plan", "--runs", tmp_path / "reg", "--images", "1e3",
                         "--target-fd", float(want) + 1e-9, "--json")
  assert rc == 0, err
  r = json.loads(out)
  c = r["choice"]
  assert c["config"] == "w48" and c["source"] == "registry" and c["interval_source"] == "fit"
  assert c["flops_per_image"] == sampling_cost(models[48][0], guided=True)["total"]
  lo, hi = c["quality_interval_95"]
  assert lo <= c["quality"] <= hi
  assert r["cost"]["training_flops"] == 3e11
  assert r["quality_fit"]["alpha"] == pytest.approx(0.4, rel=1e-3)
  unguided = [row for row in r["table"] if row["config"] == "w16"][0]
  assert unguided["sampling_flops"] == 1e3 * sampling_cost(models[16][0], guided=False)["total"]
