"""Where log lines go: the console and the workdir's ``train.log``.

Both show this project's INFO lines and other libraries' warnings and errors, except that the
console leaves out what the checkpoint libraries (orbax, TensorStore, and the asyncio loops they
run) report about a failed write: that failure reaches the user as one ``CheckpointError`` line,
and ``train.log`` keeps their details. Libraries' INFO chatter (orbax logs a dozen lines per
save) goes nowhere.

Console lines read ``HH:MM:SS message`` (``HH:MM:SS warning: message`` from WARNING up), without
absl's level/thread/file prefix; ``train.log`` keeps dates and levels. Long loops report through
:class:`Progress`: a tqdm bar when stderr is a terminal, plain periodic lines when it is not (a
captured log), the same lines going to ``train.log`` either way.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from typing import Any, Iterator, Optional

import jax

# The repository: this file is infra/logs.py.
_PROJECT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_CHECKPOINT_LIBRARIES = ("orbax", "tensorstore", "asyncio")
# A record carrying this attribute (``extra={_FILE_ONLY: True}``) skips the console: a progress
# bar already shows what it says.
_FILE_ONLY = "score_sde_file_only"


def _from_project(record: logging.LogRecord) -> bool:
  path = os.path.realpath(record.pathname)
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
    if getattr(record, _FILE_ONLY, False):
      return False
    if _from_project(record):
      return True
    return record.levelno >= logging.WARNING and not _from_checkpoint_library(record)


class _ConsoleFormatter(logging.Formatter):
  """``HH:MM:SS message``; warnings and errors say so."""

  def format(self, record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:
      message = f"{record.levelname.lower()}: {message}"
    if record.exc_info:
      message = f"{message}\n{self.formatException(record.exc_info)}"
    return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {message}"


def _is_closed_loop_callback(unraisable) -> bool:
  """TensorStore completing a write whose asyncio loop orbax already closed (after a failure)."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value))


def configure_console() -> None:
  """Filters and formats every handler of the root logger (absl's console handler under
  ``app.run``)."""
  root = logging.getLogger()
  for handler in root.handlers:
    handler.addFilter(_ConsoleFilter())
    handler.setFormatter(_ConsoleFormatter())
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


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(round(seconds))))


class Progress:
  """The progress of one loop: ``done`` of ``total`` units, with rate and time left.

  On a terminal (stderr is a TTY) a tqdm bar shows it and :meth:`report` lines go to
  ``train.log`` only; elsewhere (a captured log) :meth:`report` prints them on the console too,
  so a log file shows progress without a bar's carriage returns.

  Args:
    what: the loop's name on the bar (``"train"``, ``"bits/dim"``, ...).
    total: units in the whole loop.
    initial: units already done (a resumed run).
    unit: the unit's name (``"step"``, ``"batch"``).
    enabled: False shows and reports nothing (processes other than the first).
  """

  def __init__(self, what: str, total: int, initial: int = 0, unit: str = "step",
               enabled: bool = True):
    self.total, self.done, self.unit, self.enabled = total, initial, unit, enabled
    self._units = f"{unit}es" if unit.endswith(("s", "sh", "ch", "x")) else f"{unit}s"
    self._start_time, self._start_done = time.monotonic(), initial
    self._bar: Optional[Any] = None
    if enabled and os.isatty(2):
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(desc=what, total=total, initial=initial, unit=unit, dynamic_ncols=True,
                       leave=False)

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Counts ``n`` more units done; ``postfix`` (e.g. ``loss="0.23"``) is shown on the bar."""
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)

  def elapsed(self) -> str:
    """The time since this object started, ``H:MM:SS``."""
    return _duration(time.monotonic() - self._start_time)

  def rate_and_eta(self) -> str:
    """``"<rate> <unit>s/s, <elapsed> elapsed, <left> left"`` since this object started."""
    elapsed = time.monotonic() - self._start_time
    rate = (self.done - self._start_done) / max(elapsed, 1e-9)
    left = (self.total - self.done) / rate if rate > 0 else float("inf")
    if rate >= 1:
      rate_text = f"{rate:.3g} {self._units}/s"
    else:  # slow loops (a bits/dim batch) read better as seconds per unit
      rate_text = f"{1 / max(rate, 1e-9):.3g} s/{self.unit}"
    left_text = _duration(left) if left != float("inf") else "?"
    return f"{rate_text}, {_duration(elapsed)} elapsed, {left_text} left"

  def report(self, message: str, *args: Any) -> None:
    """Logs ``message % args`` followed by ``done/total``, rate and time left."""
    if not self.enabled:
      return
    line = f"{message % args} ({self.done}/{self.total} {self._units}, {self.rate_and_eta()})"
    if self._bar is not None:
      logging.info(line, extra={_FILE_ONLY: True})
    else:
      logging.info(line)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class PieceProgress:
  """Progress over the pieces (batches) of a long pass (bits/dim, sampling): a bar on a
  terminal, else about ten plain lines per pass (and none for a pass of one piece); process 0
  only."""

  def __init__(self, what: str, total: int):
    self._what = what
    self._progress = Progress(what, total, unit="batch", enabled=jax.process_index() == 0)
    self._every = max(1, -(-total // 10)) if total > 1 else total + 1

  def update(self, status: str) -> None:
    """One more piece done; ``status`` ends the line (``"1.2345 so far"``, ``"501 NFE"``)."""
    self._progress.update(1)
    done, total = self._progress.done, self._progress.total
    if done % self._every == 0 or (done == total and total > 1):
      self._progress.report("%s: %s", self._what, status)

  def close(self) -> None:
    self._progress.close()
