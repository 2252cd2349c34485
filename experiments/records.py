"""Writing a study's record: ``<out>/<name>_<UTC time>`` as ``.json`` (everything), ``.md`` (its
table) and, where matplotlib is installed, ``.png`` (its figure)."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Dict

import figures

Record = Dict[str, Any]


def save_record(record: Record, out_dir: str, name: str, markdown: Callable[[Record], str],
                plot: Callable[[Record, str], None]) -> str:
  """Writes ``record`` beside its table and figure, prints the table; returns the path stem."""
  os.makedirs(out_dir, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
  stem = os.path.join(out_dir, f"{name}_{stamp}")
  with open(stem + ".json", "w") as f:
    json.dump(record, f, indent=1)
  table = markdown(record)
  with open(stem + ".md", "w") as f:
    f.write(table)
  if figures.available():
    plot(record, stem + ".png")
  print(table)
  return stem
