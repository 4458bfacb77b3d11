"""analysis/frontier.py: the sampling frontier block of a report, on a hand-made sampling
table (the column set `varjax eval sampling` writes) whose Pareto set, noise-resolved levels,
cheapest configuration within the best's interval and collaborative FLOP ratios are known by
construction; the verifier note; one-line refusals of bad tables; the figure and the text."""

import csv
import json

import pytest

from analysis import frontier
from analysis.validate import AnalysisError

# The header of a real `varjax eval sampling --out X.csv` (varjax/eval/sampling_table.COLUMNS).
HEADER = (
    "config,sampler,run,refiner,switch_scale,k,params,refiner_params,train_flops,metric,"
    "quality,quality_low,quality_high,quality_bootstrap,num_images,batch_size,images_per_s,"
    "wall_s,peak_memory_bytes,peak_memory_kind,sampling_flops_per_image,"
    "verifier_flops_per_image,total_flops_per_image,verifier,verifier_mean_score,"
    "candidate_mean_score,coverage,coverage_threshold,cfg,top_k,top_p,seed,feature_network,"
    "feature_fingerprint,reference_dataset,reference_split,reference_count,tokenizer,device"
).split(",")

VERIFIER = "class confidence of verify32cnn"
# config, sampler, run, refiner, switch, K, fd, [low, high], sampling FLOPs, total FLOPs
ROWS = [
    ("small", "plain", "runs/x/small", "", "", 1, 24.0, 23.0, 25.0, 1e6, 1e6),
    ("big", "plain", "runs/x/big", "", "", 1, 20.0, 19.0, 21.0, 1e7, 1e7),
    ("big>small@1", "collaborative", "runs/x/big", "runs/x/small", 1, 1, 23.5, 22.6, 24.4,
     2e6, 2e6),
    ("big>small@2", "collaborative", "runs/x/big", "runs/x/small", 2, 1, 19.9, 19.0, 20.8,
     5e6, 5e6),
    ("small best-of-2", "best_of_k", "runs/x/small", "", "", 2, 23.8, 22.9, 24.7, 2e6, 1.2e7),
    ("big best-of-2", "best_of_k", "runs/x/big", "", "", 2, 18.0, 17.2, 18.8, 2e7, 3e7),
    ("big best-of-4", "best_of_k", "runs/x/big", "", "", 4, 17.5, 16.8, 18.2, 4e7, 6e7),
]


def write_table(path, rows=ROWS, verifier=VERIFIER, drop=()):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, [c for c in HEADER if c not in drop], extrasaction="ignore")
    w.writeheader()
    for name, sampler, run, ref, switch, k, q, lo, hi, fs, ft in rows:
      w.writerow({
          "config": name, "sampler": sampler, "run": run, "refiner": ref,
          "switch_scale": switch, "k": k, "train_flops": 2e11, "metric": "fd_embed32cnn",
          "quality": q, "quality_low": lo, "quality_high": hi, "quality_bootstrap": 20,
          "num_images": 256, "batch_size": 64, "images_per_s": 100.0,
          "sampling_flops_per_image": fs,
          "verifier_flops_per_image": ft - fs if sampler == "best_of_k" else 0.0,
          "total_flops_per_image": ft, "verifier": verifier if sampler == "best_of_k" else "",
          "verifier_mean_score": 0.5 if sampler == "best_of_k" else "",
          "coverage": 0.5 if sampler == "best_of_k" else "", "cfg": 1.5, "top_k": 900,
          "top_p": 0.96, "seed": 0, "feature_network": "embed32cnn",
          "reference_dataset": "embedded32", "reference_split": "train", "device": "cpu"})
  return str(path)


def test_pareto_noise_and_series(tmp_path):
  b = frontier.block(write_table(tmp_path / "t.csv"), None)
  assert "plot" not in b
  assert b["metric"] == "fd_embed32cnn" and b["num_images"] == 256
  assert [r["config"] for r in b["configs"]] == [r[0] for r in ROWS]
  # small best-of-2 is dominated by @1 (same FLOPs, worse fd), big by @2 (fewer FLOPs,
  # better fd); everything else is on the set, cheapest first
  assert b["pareto"] == ["small", "big>small@1", "big>small@2", "big best-of-2",
                         "big best-of-4"]
  assert b["pareto_with_verifier"] == b["pareto"]
  # steps: small -> @1 and best-of-2 -> best-of-4 overlap; the rest are resolved
  assert [s["overlap"] for s in b["pareto_steps"]] == [True, False, False, True]
  assert b["pareto_steps"][0]["flop_ratio"] == pytest.approx(2.0)
  assert b["pareto_resolved"] == ["small", "big>small@2", "big best-of-2"]
  by = {r["config"]: r for r in b["configs"]}
  assert by["big"]["dominated_by"] == ["big>small@2"] and not by["big"]["beaten_beyond_noise_by"]
  assert by["small best-of-2"]["dominated_by"] == ["big>small@1"]
  assert by["small"]["beaten_beyond_noise_by"] == []
  assert by["big>small@2"]["run"] == "big" and by["big>small@2"]["refiner"] == "small"
  assert by["big>small@2"]["switch_scale"] == 2 and by["big best-of-4"]["k"] == 4
  # the best is big best-of-4 [16.8, 18.2]; only big best-of-2 [17.2, 18.8] overlaps it
  c = b["cheapest_within_noise"]
  assert b["best"] == c["best"] == "big best-of-4"
  assert c["config"] == "big best-of-2" and c["within_noise_of_best"] == ["big best-of-2",
                                                                         "big best-of-4"]
  assert c["flop_saving_vs_best"] == pytest.approx(4e7 / 2e7)
  # collaborative: big alone 1e7 FLOPs, fd 20 [19, 21]
  (s,) = b["collaborative"]
  assert (s["drafter"], s["refiner"], s["refiner_config"]) == ("big", "small", "small")
  assert [p["switch_scale"] for p in s["points"]] == [1, 2]
  assert [p["flop_ratio"] for p in s["points"]] == pytest.approx([1e7 / 2e6, 1e7 / 5e6])
  assert [p["quality_change"] for p in s["points"]] == pytest.approx([3.5, -0.1])
  assert [p["within_drafter_interval"] for p in s["points"]] == [False, True]
  # best-of-K: K = 1 is the plain row
  bok = {x["run"]: x for x in b["best_of_k"]}
  assert [p["k"] for p in bok["big"]["points"]] == [1, 2, 4] and bok["big"]["monotone"]
  assert [p["quality_change"] for p in bok["big"]["points"]] == pytest.approx([0, -2, -2.5])
  assert [p["overlaps_k1"] for p in bok["big"]["points"]] == [True, False, False]
  assert bok["small"]["points"][1]["overlaps_k1"] and bok["small"]["monotone"]
  v = b["verifier_note"]
  assert v["verifier"] == VERIFIER and v["fd_network"] == "embed32cnn"
  assert v["same_network"] is False and "upper bound" in v["text"]
  notes = " ".join(b["notes"])
  assert "at @2 the fd_embed32cnn is within the drafter's 95% interval" in notes
  assert "small best-of-K at K = 2 is within the K = 1 interval" in notes
  assert "big, small best-of-2 are off the Pareto set by point estimates only" in notes
  assert "resolves small (1e6 FLOPs, fd_embed32cnn 24) -> big>small@2" in notes
  json.dumps(b, allow_nan=False)


def test_collaborative_within_noise_everywhere(tmp_path):
  rows = [r if r[0] != "big>small@1" else r[:6] + (20.5, 19.6, 21.4) + r[9:] for r in ROWS]
  b = frontier.block(write_table(tmp_path / "t.csv", rows), None)
  assert any("within the plain drafter's 95% interval [19, 21] at every switch" in n
             and "the table cannot rank them" in n for n in b["notes"])
  assert "within its interval at every switch" in frontier.summary_lines(b)[1]


def test_verifier_is_the_fd_network(tmp_path):
  b = frontier.block(write_table(tmp_path / "t.csv", verifier="class confidence of embed32cnn"),
                     None)
  v = b["verifier_note"]
  assert v["same_network"] is True and "not evidence of better samples at all" in v["text"]
  assert "no evidence" in frontier.summary_lines(b)[-1]
  plain_only = frontier.block(write_table(tmp_path / "p.csv", ROWS[:2]), None)
  assert plain_only["verifier_note"] is None and plain_only["collaborative"] == []


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("empty_file", "not a sampling table"),
    ("header_only", "no rows"),
    ("no_quality", "no column quality"),
    ("bad_sampler", "unknown sampler 'beam'"),
    ("no_flops", "row 2 (big) has no positive sampling FLOPs per image"),
])
def test_bad_tables_one_line(tmp_path, case, message):
  path = tmp_path / "t.csv"
  if case == "empty_file":
    path.write_text("")
  elif case == "header_only":
    write_table(path, rows=[])
  elif case == "no_quality":
    write_table(path, drop=("quality",))
  elif case == "bad_sampler":
    write_table(path, rows=[ROWS[0][:1] + ("beam",) + ROWS[0][2:]])
  elif case == "no_flops":
    write_table(path, rows=[ROWS[0], ROWS[1][:9] + (0.0, 1e7)])
  with pytest.raises(AnalysisError) as e:
    frontier.block(str(path), None)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert str(e.value).startswith(f"sampling table {path}")


def test_figure_and_text(tmp_path):
  b = frontier.block(write_table(tmp_path / "t.csv"), str(tmp_path / "out"))
  assert b["plot"] == str(tmp_path / "out" / "sampling_frontier.png")
  with open(b["plot"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  md = frontier.section(b)
  assert md[-1] == "![sampling frontier](sampling_frontier.png)"
  text = "\n".join(md)
  assert "| big>small@2 | collaborative | @2 | 5e6 | 5e6 | 19.9 [19, 20.8] |" in text
  assert "The cheapest configuration within its interval is big best-of-2" in text
  assert "**Verifier.**" in text and "- " + b["notes"][0] in md
  lines = frontier.summary_lines(b)
  assert len(lines) == 3 and all(line.startswith("sampling frontier: ") for line in lines)
  assert lines[1].startswith("sampling frontier: big > small at @1, @2: 2-5x fewer")
  assert lines[2].startswith("sampling frontier: big best-of-4: fd_embed32cnn 20 -> 17.5 at 4x")
  assert "Pareto small, big>small@1, big>small@2, big best-of-2, big best-of-4" in lines[0]
