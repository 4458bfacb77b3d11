"""One progress-bar helper: silent in logs unless asked, tqdm with ETA on a terminal."""

from varjax import progress


def test_bar_is_silent_when_stderr_is_not_a_terminal(capsys):
  assert list(progress.bar(range(3), desc="work")) == [0, 1, 2]  # pytest's stderr: no tty
  assert capsys.readouterr().err == ""


def test_bar_shows_counts_when_enabled(capsys):
  bar = progress.bar(total=4, desc="steps", unit="step", enabled=True)
  bar.update(4)
  bar.close()
  err = capsys.readouterr().err
  assert "steps" in err and "4/4" in err


def test_bar_can_be_forced_off():
  bar = progress.bar(total=2, enabled=False)
  assert bar.disable
  bar.update(2)  # no-op, no error
  bar.close()
