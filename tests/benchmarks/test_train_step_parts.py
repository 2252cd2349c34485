"""The train-step breakdown (``benchmarks/train_step_parts.py``) times the config's own loss,
gradient and step, and refuses a bad batch in one line."""

import json

import pytest

from benchmarks import train_step_parts


def test_the_three_parts_are_timed_and_tabulated(tmp_path):
  stem = train_step_parts.main(["--config", "configs/toy/swiss_roll.py", "--batch", "8",
                                "--repeats", "2", "--out", str(tmp_path)])
  with open(stem + ".json") as f:
    record = json.load(f)
  assert list(record["parts"]) == ["loss", "loss + gradient", "train step"]
  assert record["batch"] == 8 and record["config"] == "swiss_roll.py"
  for part in record["parts"].values():
    assert part["first_s"] > 0 and 0 < part["min_ms"] <= part["median_ms"]
  with open(stem + ".md") as f:
    assert "x the forward loss" in f.read()


def test_a_bad_batch_is_refused():
  with pytest.raises(ValueError, match="--batch and --repeats must be >= 1"):
    train_step_parts.main(["--config", "configs/toy/swiss_roll.py", "--batch", "0"])
