"""Time to a bits/dim target (``experiments/time_to_bpd.py``): which targets a curve reaches,
and a tiny run on real MNIST giving a complete, self-consistent record."""

import glob
import json
import os

import numpy as np
import pytest

import configs
from benchmarks import run as bench
from experiments import time_to_bpd
from infra.devices import Devices
from tests.conftest import MNIST_DIR


def test_targets_reached_takes_first_point_at_or_below():
  curve = [{"step": s, "train_s": float(s), "images": 8 * s, "bpd": b}
           for s, b in ((5, 3.0), (10, 1.9), (15, 2.1), (20, 1.5))]
  got = time_to_bpd.targets_reached(curve, [2.0, 1.5, 1.0])
  assert [t["reached"] for t in got] == [True, True, False]
  assert (got[0]["step"], got[0]["bpd"]) == (10, 1.9)
  assert (got[1]["step"], got[1]["train_s"]) == (20, 20.0)


@pytest.mark.skipif(not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason=f"real MNIST IDX files not found in {MNIST_DIR}")
def test_time_to_bpd_on_real_mnist(tmp_path, monkeypatch):
  """Two evaluations of a tiny network on real MNIST: a complete, self-consistent record, and the
  same test images, dequantization and probes at every evaluation (same params -> same bpd)."""
  evaluations = []
  real_measure_bpd = time_to_bpd.measure_bpd

  def measure_twice(bpd_fn, params, blocks, devices, seed):
    # Again with the run's own compiled bits/dim, parameters, images and seed: an evaluation
    # redrawing its dequantization or probes would differ.
    first, again = (real_measure_bpd(bpd_fn, params, blocks, devices, seed) for _ in range(2))
    evaluations.append((blocks, seed, first, again))
    return first

  monkeypatch.setattr(time_to_bpd, "measure_bpd", measure_twice)
  overrides = [f"data.data_dir={MNIST_DIR}", "model.nf=8", "model.ch_mult=(1,)",
               "model.attn_resolutions=()", "model.num_res_blocks=1", "training.batch_size=8",
               "eval.rtol=1e-2", "eval.atol=1e-2"]
  argv = [arg for o in overrides for arg in ("--override", o)] + [
          "--targets", "1000,0", "--eval_every", "5", "--eval_examples", "2",
          "--eval_batch_size", "1", "--max_steps", "10", "--out", str(tmp_path)]
  result = time_to_bpd.main(argv)
  (path,) = glob.glob(str(tmp_path / "time_to_bpd_vpsde_mnist_fp32_cpu_*.json"))
  with open(path) as f:
    assert json.load(f)["curve"] == result["curve"]
  curve = result["curve"]
  assert [p["step"] for p in curve] == [5, 10]
  assert [p["images"] for p in curve] == [40, 80]
  assert 0.0 < result["first_call_s"] <= curve[0]["train_s"] < curve[1]["train_s"]
  assert result["images_per_s"] == pytest.approx(40 / (curve[1]["train_s"] - curve[0]["train_s"]))
  for point in curve:
    # An untrained network: far worse than the 8 bits/dim of a uniform pixel model, yet finite.
    assert 8.0 < point["bpd"] < 100.0 and point["nfe"] > 0 and point["eval_s"] > 0
  assert curve[0]["bpd"] != curve[1]["bpd"]
  assert [t["reached"] for t in result["targets"]] == [True, False]
  assert result["targets"][0]["step"] == 5
  assert result["eval"]["offset_bits"] == 7.0 and result["precision"] == "fp32"

  (blocks, seed, *_), (later_blocks, later_seed, *_) = evaluations
  assert [b.shape for b in blocks] == [(1, 28, 28, 1)] * 2  # the first 2 test images, 1 per block
  assert seed == later_seed and all(np.array_equal(a, b) for a, b in zip(blocks, later_blocks))
  for point, (_, _, first, again) in zip(curve, evaluations):
    assert point["bpd"] == first["bpd"] == again["bpd"] and first["nfe"] == again["nfe"]
  config = configs.apply_overrides(configs.load_config(bench.MNIST),
                                   [configs.parse_override(o) for o in overrides])
  with pytest.raises(ValueError, match="multiple of --eval_batch_size"):
    time_to_bpd.first_test_images(config, 3, 2, Devices())
