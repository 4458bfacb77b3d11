"""Files written so that a crash never leaves a half-written one under the final name:
write a temp file beside it, then rename (atomic on POSIX). Every writer of configs,
parameters, checkpoints, summaries and token-cache metadata goes through here."""

from __future__ import annotations

import json
import os
from typing import Any


def write_atomic(path: str, data: str | bytes) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, values: Any) -> None:
  write_atomic(path, json.dumps(values, indent=2) + "\n")
