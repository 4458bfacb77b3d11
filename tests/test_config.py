"""Config: defaults, overrides, file round trips, and one-line errors naming the key."""

import dataclasses
import json

import pytest
import yaml

from varjax import config
from varjax.errors import ConfigError
from conftest import run_varjax


def test_defaults_describe_var_d16_at_256px():
  cfg = config.Config()
  assert (cfg.model.resolved_width, cfg.model.resolved_heads) == (1024, 16)
  assert cfg.model.num_tokens == 680  # VAR's 256 px schedule (docs/models.md)
  assert cfg.model.resolved_drop_path_rate == pytest.approx(0.1 * 16 / 24)
  assert cfg.optim.resolved_peak_lr(512) == pytest.approx(2e-4)  # 1e-4 x 512 / 256


def test_configs_are_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.Config().model.depth = 3  # type: ignore[misc]


def test_dotted_overrides_parse_and_coerce():
  cfg = config.load_config(overrides=[
      "--model.depth=4", "--model.patch_nums=1,2,4", "--data.dataset", "embedded64",
      "--optim.peak_lr=3e-4", "--model.shared_aln=true", "--data.data_dir=null"])
  assert cfg.model.depth == 4 and cfg.model.name == "var-d4"
  assert cfg.model.patch_nums == (1, 2, 4)
  assert cfg.data.dataset == "embedded64"
  assert cfg.optim.peak_lr == 3e-4 and isinstance(cfg.optim.peak_lr, float)
  assert cfg.model.shared_aln is True
  assert cfg.data.data_dir is None


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_save_and_load_round_trip(tmp_path, suffix):
  cfg = config.load_config(overrides=["--model.depth=6", "--mesh.fsdp=2", "--run.name=x"],
                           base={"model": config.model_overrides("var-d3")})
  path = str(tmp_path / f"config{suffix}")
  cfg.save(path)
  assert config.load_config(path) == cfg
  with open(path) as f:
    raw = json.load(f) if suffix == ".json" else yaml.safe_load(f)
  assert raw["model"]["patch_nums"] == list(cfg.model.patch_nums)


def test_file_then_overrides_take_precedence(tmp_path):
  path = tmp_path / "c.yaml"
  path.write_text("model:\n  depth: 8\ndata:\n  resolution: 64\n")
  cfg = config.load_config(str(path), ["--model.depth=2"])
  assert (cfg.model.depth, cfg.data.resolution) == (2, 64)


@pytest.mark.parametrize("override, key, fragment", [
    ("--model.dpth=3", "model.dpth", "unknown key"),
    ("--modl.depth=3", "modl", "unknown key"),
    ("--model.depth=abc", "model.depth", "expected int"),
    ("--model.depth=2.5", "model.depth", "expected int"),
    ("--model.depth=0", "model.depth", "must be >= 1"),
    ("--model.heads=5", "model.heads", "not divisible"),
    ("--model.patch_nums=4,2", "model.patch_nums", "increase"),
    ("--optim.schedule=cosnie", "optim.schedule", "one of"),
    ("--optim.b2=1.5", "optim.b2", "[0, 1)"),
    ("--data.global_batch_size=-8", "data.global_batch_size", ">= 1"),
    ("--model.shared_aln=maybe", "model.shared_aln", "expected bool"),
    ("--model.depth.x=1", "model.depth", "expected int"),
    ("--optim.peak_lr=fast", "optim.peak_lr", "expected float"),
])
def test_bad_values_name_the_key(override, key, fragment):
  with pytest.raises(ConfigError) as err:
    config.load_config(overrides=[override])
  assert err.value.key == key
  assert fragment in str(err.value)


def test_bad_file_is_one_clear_error(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("model: [unclosed\n")
  with pytest.raises(ConfigError, match="not valid YAML"):
    config.load_config(str(bad))
  with pytest.raises(ConfigError, match="file not found"):
    config.load_config(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("name, content, fragment", [
    ("list.yaml", b"- model\n- data\n", "got a list"),
    ("scalar.yaml", b"5\n", "got an int"),
    ("zero.yaml", b"0\n", "got an int"),
    ("list.json", b"[]", "got a list"),
    ("latin1.yaml", "model:\n  name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
])
def test_config_file_that_is_not_a_mapping_is_one_line_naming_it(tmp_path, capsys, name,
                                                                 content, fragment):
  from varjax import cli
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ConfigError) as err:
    config.load_config(str(path))
  assert str(path) in str(err.value) and fragment in str(err.value)
  assert cli.main(["config", "show", "--config", str(path)]) == 2
  out = capsys.readouterr()
  assert out.out == "" and len(out.err.splitlines()) == 1
  assert out.err.startswith("varjax: error: config: ") and str(path) in out.err


def test_empty_config_file_means_no_changes(tmp_path):
  path = tmp_path / "empty.yaml"
  path.write_text("# nothing set yet\n")
  assert config.load_config(str(path)) == config.Config()


@pytest.mark.parametrize("raw, steps", [
    ("1e4", 10000), ("2.5e3", 2500), ("1E2", 100), ("1.0e+4", 10000),
    ("12345678901234567e3", 12345678901234567000)])  # exact, beyond a float's 53 bits
def test_exponent_notation_is_an_int_when_exact(raw, steps):
  assert config.load_config(overrides=[f"--run.steps={raw}"]).run.steps == steps
  assert isinstance(config.load_config(overrides=[f"--run.steps={raw}"]).run.steps, int)


@pytest.mark.parametrize("raw", ["1.5e0", "1e-1", "nan", "inf", "10", "1e4x"])
def test_int_fields_refuse_inexact_or_non_numeric_strings(tmp_path, raw):
  with pytest.raises(ConfigError) as err:
    config.load_config(overrides=[f"--run.steps={raw!r}"])  # quoted: always a string
  assert err.value.key == "run.steps" and "expected int" in str(err.value)


def test_unknown_model_name():
  assert config.model_overrides("var-d20") == {"depth": 20}
  with pytest.raises(ConfigError, match="unknown model name"):
    config.model_overrides("var-large")


def test_cli_prints_one_line_and_no_traceback():
  ok = run_varjax("config", "show", "--model", "var-d4", "--model.patch_nums=1,2,3", "--json")
  assert ok.returncode == 0, ok.stderr
  shown = json.loads(ok.stdout)
  assert shown["model"]["depth"] == 4 and shown["model"]["patch_nums"] == [1, 2, 3]
  bad = run_varjax("config", "show", "--optim.warmup_steps=-1")
  assert bad.returncode == 2
  assert "Traceback" not in bad.stderr
  assert bad.stderr.strip() == "varjax: error: optim.warmup_steps: must be >= 0"
