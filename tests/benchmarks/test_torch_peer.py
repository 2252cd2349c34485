"""benchmarks/torch_peer.py without torch: the compared network is the one the comparison names
(1,754,147 parameters, as the PyTorch peer counts it), the peer's scratch folder is built from a
checkout and refused without one, and the table reads its record."""

import os

import pytest

import builders
from benchmarks import torch_peer
from models import utils as mutils


def test_the_compared_network():
  config = torch_peer.reduced_config()
  _, params = builders.abstract_model(config)
  assert mutils.parameter_count(params) == 1_754_147
  assert config.model.ch_mult == (1, 2, 2) and config.data.image_size == 32


def test_scratch_folder(tmp_path):
  peer = tmp_path / "peer"
  os.makedirs(peer / "models")
  (peer / "models" / "ncsnpp.py").write_text("# the peer's network\n")
  for name in ("losses.py", "sde_lib.py"):
    (peer / name).write_text("\n")
  scratch = tmp_path / "scratch"
  os.makedirs(scratch)
  torch_peer._peer_scratch(str(peer), str(scratch))  # pylint: disable=protected-access
  assert sorted(os.listdir(scratch)) == ["driver.py", "losses.py", "models", "op", "sde_lib.py"]
  assert "def upfirdn2d" in (scratch / "op" / "__init__.py").read_text()
  with pytest.raises(FileNotFoundError, match="checkout of score_sde_pytorch"):
    torch_peer._peer_scratch(  # pylint: disable=protected-access
        str(tmp_path / "nothing"), str(tmp_path / "s2"))


def test_table():
  record = {"date": "2026-12-07 20:00 UTC", "machine": "cpu", "command": "c",
            "equality": {"max_output_diff": 8.5e-6, "max_output": 2.02, "loss": 1.185,
                         "loss_diff": 0.0},
            "rows": [{"threads": 1, "batch": 16, "case": "train", "ours": 2.0, "peer": 1.0}],
            "extras": [{"threads": 1, "batch": 16, "ours_first": 30.0, "peer_first": 1.0,
                        "ours_faults": 100, "peer_faults": 10, "ours_rss": 1600,
                        "peer_rss": 800}],
            "ours_xla_flags": "--xla_cpu_multi_thread_eigen=false"}
  table = torch_peer._markdown(record)  # pylint: disable=protected-access
  assert "| 1 | 16 | train | 2.000 | 1.000 | 2.00 |" in table
  assert "largest network output difference 8.50e-06" in table
  assert "XLA defaults" not in table
  record["rows"][0]["ours_xla_defaults"] = 3.0
  record["extras"][0].update(defaults_first=40.0, defaults_faults=500, defaults_rss=1700)
  table = torch_peer._markdown(record)  # pylint: disable=protected-access
  assert "| 1 | 16 | train | 2.000 | 1.000 | 2.00 | 3.000 | 3.00 |" in table
  assert "| 1 | 16 | 40.0 | 500 | 1700 |" in table
