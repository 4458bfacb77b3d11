"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class VarjaxError(Exception):
  """A mistake the user can fix (bad config, missing data, ...)."""


class ConfigError(VarjaxError, ValueError):
  """A config key is unknown, has the wrong type or an impossible value."""

  def __init__(self, key: str, message: str):
    self.key, self.message = key, message
    super().__init__(f"{key}: {message}")

  def __reduce__(self):  # picklable (Ray sends a worker's errors back to the driver)
    return type(self), (self.key, self.message)


class DataError(VarjaxError):
  """A dataset is missing, unprepared or corrupt; the message says what to do."""


class Preempted(VarjaxError):
  """SIGTERM or Ctrl-C arrived and a checkpoint was written; the CLI exits with 143
  (128 + SIGTERM) or 130 (128 + SIGINT) and the same command resumes."""
  exit_code = 143

  @classmethod
  def after_save(cls, reason: str, step: int, where: str = "") -> "Preempted":
    error = cls(f"{reason}: saved step {step}" + (f" in {where}" if where else "")
                + "; rerun the same command to resume")
    error.exit_code = 130 if reason == "Ctrl-C" else 143
    return error
