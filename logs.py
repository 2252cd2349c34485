"""Where log lines go: the console and the workdir's ``train.log``.

Both show this project's INFO lines and other libraries' warnings and errors, except that the
console leaves out what the checkpoint libraries (orbax, TensorStore, and the asyncio loops they
run) report about a failed write: that failure reaches the user as one ``CheckpointError`` line,
and ``train.log`` keeps their details. Libraries' INFO chatter (orbax logs a dozen lines per
save) goes nowhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

_PROJECT = os.path.dirname(os.path.abspath(__file__))
_CHECKPOINT_LIBRARIES = ("orbax", "tensorstore", "asyncio")


def _from_project(record: logging.LogRecord) -> bool:
  path = os.path.abspath(record.pathname)
  return path.startswith(_PROJECT + os.sep) and f"{os.sep}site-packages{os.sep}" not in path


def _from_checkpoint_library(record: logging.LogRecord) -> bool:
  where = f"{record.name} {record.pathname}"
  return any(f"{os.sep}{lib}{os.sep}" in where or record.name.startswith(lib)
             for lib in _CHECKPOINT_LIBRARIES)


class _FileFilter(logging.Filter):
  """This project's lines at any level; libraries' warnings and errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return _from_project(record) or record.levelno >= logging.WARNING


class _ConsoleFilter(_FileFilter):
  """As in the file, but without the checkpoint libraries' own reports."""

  def filter(self, record: logging.LogRecord) -> bool:
    if _from_project(record):
      return True
    return record.levelno >= logging.WARNING and not _from_checkpoint_library(record)


def _is_closed_loop_callback(unraisable) -> bool:
  """TensorStore completing a write whose asyncio loop orbax already closed (after a failure)."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value))


def configure_console() -> None:
  """Filters every handler of the root logger (absl's console handler under ``app.run``)."""
  root = logging.getLogger()
  for handler in root.handlers:
    handler.addFilter(_ConsoleFilter())
  root.setLevel(logging.INFO)
  default_hook = sys.unraisablehook

  def unraisable_hook(unraisable) -> None:
    if _is_closed_loop_callback(unraisable):
      logging.getLogger("asyncio").debug("ignored: %s", unraisable.exc_value)
    else:
      default_hook(unraisable)

  sys.unraisablehook = unraisable_hook


class _QuietFileHandler(logging.FileHandler):
  """A file handler that stays silent when the disk is full (the run reports that itself)."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record


@contextlib.contextmanager
def to_file(path: str, enabled: bool = True) -> Iterator[None]:
  """Copies log lines (see the module docstring) to ``path`` while the block runs.

  Args:
    path: the log file, appended to.
    enabled: False writes nothing (processes other than the first of a multi-process run, so
      that the file holds each line once).
  """
  if not enabled:
    yield
    return
  handler = _QuietFileHandler(path)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  handler.addFilter(_FileFilter())
  root = logging.getLogger()
  root.addHandler(handler)
  level = root.level
  root.setLevel(min(level, logging.INFO))
  try:
    yield
  finally:
    root.removeHandler(handler)
    root.setLevel(level)
    handler.close()
