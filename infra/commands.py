"""What a command-line entry point does with a user's mistake: one line, a non-zero exit."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from infra.checkpoints import CheckpointError

USER_ERRORS = (ValueError, OSError, FloatingPointError, CheckpointError)
"""Errors that say what the user asked for is wrong (a setting, a path, diverging training, an
unreadable checkpoint); anything else is a bug and keeps its traceback."""


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
  """Turns a :data:`USER_ERRORS` raised in the block into ``error: <message>`` on one line and
  exit status 1."""
  try:
    yield
  except USER_ERRORS as e:
    sys.exit(f"error: {' '.join(str(e).split()) or type(e).__name__}")
