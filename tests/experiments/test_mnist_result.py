"""The MNIST result (``experiments/mnist_result.py``): the final bits/dim pass stops before its
deadline with a fixed-order prefix, and a tiny end-to-end run on real MNIST gives its record,
curves, probes, samples and final bits/dim."""

import glob
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import figures
from experiments import mnist_result
from infra.devices import Devices
from tests.conftest import MNIST_DIR


def test_mnist_result_bpd_prefix_stops_before_the_deadline():
  """The final bits/dim pass evaluates blocks in order and stops when the slowest block so far
  would not fit before the deadline: a fixed-order prefix, marked incomplete."""
  blocks = [np.full((2, 1), k, np.float32) for k in range(3)]

  def bpd_fn(rng, params, batch):
    del rng, params
    return jnp.asarray(batch[:, 0]) + 1.0, jnp.asarray(10)

  seen = []
  for left, examples, complete in ((1e9, 6, True), (5.0, 2, False)):
    deadline = mnist_result.Deadline(left / 60.0, clock=lambda: 0.0)
    got = mnist_result.full_bpd_phase(bpd_fn, {}, blocks, Devices(), seed=0, split_examples=7,
                                      deadline=deadline, on_batch=seen.append)
    assert (got["examples"], got["complete"], got["split_examples"]) == (examples, complete, 7)
    assert got["bpd"] == pytest.approx(np.mean(np.arange(examples // 2).repeat(2) + 1.0))
    assert got["nfe"] == 10.0
  assert [s["examples"] for s in seen] == [2, 4, 6, 2]


@pytest.mark.skipif(not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason=f"real MNIST IDX files not found in {MNIST_DIR}")
def test_mnist_result_on_real_mnist(tmp_path):
  """A tiny end-to-end run: its record, loss curve, probes, samples and final bits/dim."""
  overrides = [f"data.data_dir={MNIST_DIR}", "model.nf=8", "model.ch_mult=(1,)",
               "model.attn_resolutions=()", "model.num_res_blocks=1", "training.batch_size=8",
               "eval.rtol=1e-2", "eval.atol=1e-2", "model.num_scales=10"]
  argv = [arg for o in overrides for arg in ("--override", o)] + [
          "--max_steps", "10", "--log_every", "5", "--checkpoints", "1", "--probe_examples", "2",
          "--eval_batch_size", "1", "--max_test_examples", "2", "--num_samples", "4",
          "--classifier", str(tmp_path / "none.msgpack"), "--out", str(tmp_path)]
  result = mnist_result.main(argv)
  stem = glob.glob(str(tmp_path / "mnist_result_vpsde_mnist_cpu_*.json"))[0][:-len(".json")]
  with open(stem + ".json") as f:
    assert json.load(f)["test_bpd"] == result["test_bpd"]
  assert [p["step"] for p in result["loss_curve"]] == [5, 10] and result["steps"] == 10
  assert [p["step"] for p in result["probes"]] == [10]  # the budget's midpoint is never reached
  full = result["test_bpd"]
  assert (full["examples"], full["complete"], full["split_examples"]) == (2, True, 10000)
  assert 8.0 < full["bpd"] < 100.0 and full["nfe"] > 0
  samples = result["samples"]
  assert (samples["num_samples"], samples["nfe"]) == (4, 11.0)  # 10 EM steps + the denoising
  assert "no MNIST classifier at" in samples["metrics"]["skipped"]
  assert np.load(stem + "_samples.npz")["samples"].shape == (4, 28, 28, 1)
  assert os.path.isfile(stem + "_samples.png")
  assert os.path.isfile(stem + "_curves.png") == figures.available()
  os.remove(stem + "_samples.png")
  mnist_result.main(["--plot", stem + ".json"])  # redraws the pictures from the record
  assert os.path.isfile(stem + "_samples.png")
