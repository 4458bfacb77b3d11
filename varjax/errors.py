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
  """SIGTERM arrived and a checkpoint was written; the CLI exits with 143 (128 + SIGTERM)
  and the same command resumes."""
  exit_code = 143
