"""``infra.logs``: progress reported in plain lines without a terminal, console lines that read
time then message."""

import logging
import os
import re

from infra import logs


def test_progress_reports_plain_lines_without_a_terminal(caplog, monkeypatch):
  monkeypatch.setattr(os, "isatty", lambda fd: False)
  with caplog.at_level(logging.INFO):
    progress = logs.Progress("train", 10, initial=4)
    progress.update(3)
    progress.report("step %d: loss %.2f", 7, 0.5)
    progress.close()
  (line,) = caplog.messages
  assert line.startswith("step 7: loss 0.50 (7/10 steps, ") and line.endswith(" left)")


def test_console_lines_read_time_then_message():
  formatter = logs._ConsoleFormatter()  # pylint: disable=protected-access
  info = logging.LogRecord("x", logging.INFO, __file__, 1, "step %d", (3,), None)
  warning = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful", (), None)
  assert re.fullmatch(r"\d\d:\d\d:\d\d step 3", formatter.format(info))
  assert re.fullmatch(r"\d\d:\d\d:\d\d warning: careful", formatter.format(warning))
