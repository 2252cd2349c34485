"""The speed-benchmark suite (``benchmarks/run.py``).

The tiny suite runs in a subprocess: XLA flags that cut CPU compile time (``TINY_XLA_FLAGS``)
only act on a fresh backend. Nothing here asserts a time: only that the records are complete
and self-consistent (positive times, exact NFE counts, FLOPs from XLA).
"""

import glob
import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import configs
import datasets
from benchmarks import run as bench
from configs.toy import gaussian_mixture
from tests.runs import REPO

# The tiny suite but train/ddpmpp/fp32 (a CPU compile of ~12 s): mnist/fp32 runs the same fp32
# one-step train path, so every group, kind, precision and steps-per-call variant still runs
# (test_tiny_subset_covers_the_tiny_suite).
TINY_ONLY = "train/ddpmpp/bf16,sample,ode,bpd,forward,mnist"


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory):
  """The environment of the ``benchmarks.run`` subprocesses, with one persistent compilation
  cache: ``--compile_only`` of tiny cases then loads the programs the tiny run compiled (the
  same HLO) instead of compiling them again; a program that differs still compiles."""
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=bench.TINY_XLA_FLAGS,
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bench_env):
  out = tmp_path_factory.mktemp("bench")
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--only", TINY_ONLY,
                         "--out", str(out)], cwd=REPO, env=bench_env, capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (json_path,) = glob.glob(str(out / "speed_tiny_cpu_*.json"))
  with open(json_path) as f:
    result = json.load(f)
  with open(json_path[:-len(".json")] + ".md") as f:
    return result, f.read()


def test_tiny_header(tiny):
  result, _ = tiny
  assert result["device"] == {"device_kind": "cpu", "platform": "cpu", "count": 1,
                              "process_count": 1}
  assert result["versions"]["jax"] == jax.__version__
  assert result["versions"]["flax"] == flax.__version__
  assert result["command"].startswith("python -m benchmarks.run --tiny")
  assert result["tiny"] is True and result["date"][:2] == "20"
  assert [r["name"] for r in result["records"]] == [
      c.name for c in bench.select(bench.suite(tiny=True), TINY_ONLY)]


def _variants(cases):
  """The groups, kinds, and per kind the precisions and steps per call, that ``cases`` cover."""
  out = set()
  for case in cases:
    overrides, options = dict(case.overrides), dict(case.options)
    out |= {("group", case.group), ("kind", case.kind),
            (case.kind, "bf16" if overrides.get("training.mixed_precision") else "fp32"),
            (case.kind, "n_jitted", options.get("n_jitted"))}
  return out


def test_tiny_subset_covers_the_tiny_suite():
  cases = bench.suite(tiny=True)
  selected = bench.select(cases, TINY_ONLY)
  assert _variants(selected) == _variants(cases)


def test_tiny_records(tiny):
  result, _ = tiny
  for rec in result["records"]:
    name = rec["name"]
    if rec["config"] == bench.MNIST and not os.path.exists(os.path.join(REPO, bench.MNIST)):
      assert rec["status"] == "skipped", name
      continue
    assert rec["status"] == "ok", (name, rec.get("error"), rec.get("traceback"))
    m = rec["metrics"]
    assert rec["precision"] == ("bf16" if rec["overrides"].get("training.mixed_precision")
                                else "fp32")
    assert m["compile_s"] > 0, name
    assert m["peak_bytes_in_use"] is None, name  # CPUs report no memory stats
    if rec["group"] != "mnist":
      assert rec["overrides"]["model.nf"] == bench.TINY_MODEL["model.nf"], name
    if rec["kind"] == "train":
      assert m["n_jitted_steps"] == rec["options"]["n_jitted"]
      assert m["timed_calls"] == rec["options"]["steps"]
      assert m["ms_per_step"] > 0 and m["ms_per_step_pipelined"] > 0
      assert m["images_per_s"] == pytest.approx(m["batch_size"] / m["ms_per_step"] * 1e3)
      assert m["flops_per_step"] > 0 and m["tflops_per_s"] > 0
      assert m["compiled_bytes"] > 0 and m["num_params"] > 0
    elif rec["kind"] == "forward":
      assert m["ms_per_call"] > 0 and m["flops_per_call"] > 0 and m["tflops_per_s"] > 0
    else:
      assert m["wall_s"] > 0 and m["nfe"] > 0, name
      assert m["ms_per_nfe"] == pytest.approx(m["wall_s"] * 1e3 / m["nfe"])
      assert m["images_per_s"] == pytest.approx(m["batch_size"] / m["wall_s"])


def test_tiny_nfe_counts(tiny):
  """Exact NFE: PC = steps * (predictor + corrector) + denoise; Tsit5 = 1 + 6 * steps (+1)."""
  records = {r["name"]: r for r in tiny[0]["records"]}
  pc = records["sample/ddpmpp/pc"]["metrics"]
  assert (pc["predictor"], pc["corrector"]) == ("reverse_diffusion", "langevin")
  assert pc["nfe"] == 2 * pc["num_steps"] + 1
  assert (records["ode/ddpmpp"]["metrics"]["nfe"] - 2) % 6 == 0  # + the denoising call
  assert (records["bpd/ddpmpp"]["metrics"]["nfe"] - 1) % 6 == 0


def test_tiny_markdown(tiny):
  result, table = tiny
  for rec in result["records"]:
    assert f"| {rec['name']} |" in table
  assert table.count("\n|") == len(result["records"]) + 2  # header and rule


def test_full_suite_matches_the_reference_setup():
  cases = {c.name: c for c in bench.suite(tiny=False)}
  assert set(bench.REFERENCE) <= set(cases)
  for case in cases.values():
    options, overrides = dict(case.options), dict(case.overrides)
    assert not any(key.startswith("model.") for key in overrides), case.name
    if case.kind == "train" and case.group == "train":
      assert overrides["training.batch_size"] == 128 and options["steps"] >= 20
      assert options["n_jitted"] in (1, 5)
    if case.group == "sample":
      assert options["num_steps"] == 1000 and options["batch"] == 128
    if case.kind == "forward":
      assert options["batch"] == 1024


def test_full_suite_builds_full_size_networks():
  """Every full-size case's config and overrides load; the networks are the CIFAR-10 /
  MNIST ones (parameter counts by ``jax.eval_shape``: nothing is allocated or compiled)."""
  built = {}
  for case in bench.suite(tiny=False):
    if not os.path.exists(os.path.join(REPO, case.config)):
      continue
    config = configs.apply_overrides(configs.load_config(case.config), case.overrides)
    model = builders.build_model(config)
    bf16 = dict(case.overrides).get("training.mixed_precision", False)
    assert model.dtype == (jnp.bfloat16 if bf16 else jnp.float32), case.name
    if case.config not in built:
      shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                              jnp.zeros(datasets.input_shape(config, 1)), jnp.ones((1,)))
      built[case.config] = sum(int(np.prod(p.shape))
                               for p in jax.tree_util.tree_leaves(shapes["params"]))
  assert built[bench.DDPMPP] > 50e6 and built[bench.NCSNPP] > 50e6, built
  if bench.MNIST in built:
    assert 1e6 < built[bench.MNIST] < 50e6, built


def test_compile_only_builds_without_running(tmp_path, bench_env):
  """``--compile_only``: every selected case compiles and reports FLOPs / XLA's memory estimate,
  and nothing is timed or sampled. (After the tiny run these programs come from its cache.)"""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--compile_only",
                         "--only", "train/ddpmpp/bf16,sample,forward", "--out", str(tmp_path)],
                        cwd=REPO, env=bench_env, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = glob.glob(str(tmp_path / "speed_tiny_compile_only_cpu_*.json"))
  with open(path) as f:
    result = json.load(f)
  assert result["compile_only"] is True
  names = [r["name"] for r in result["records"]]
  assert names == ["train/ddpmpp/bf16/n_jitted=2", "sample/ddpmpp/pc", "forward/ddpmpp/bf16"]
  for rec in result["records"]:
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["compile_s"] > 0 and m["compiled_bytes"] > 0, rec
    assert not {"ms_per_step", "ms_per_call", "wall_s", "nfe"} & set(m), rec["name"]
  train, _, forward = (r["metrics"] for r in result["records"])
  assert train["flops_per_step"] > forward["flops_per_call"] > 0
  # Two steps per call: the scan body runs twice, the code around it once.
  outside = train["kernels"] - train["kernels_in_loops"]
  assert train["kernels_in_loops"] > 0 and outside > 0
  assert train["kernels_per_step"] == train["kernels_in_loops"] + outside / 2
  assert "compile only" in open(path[:-len(".json")] + ".md").read()


_HLO = """HloModule jit_f, is_scheduled=true

%fused_add (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%p0, %p0)
}

%body (state: (s32[], f32[4])) -> (s32[], f32[4]) {
  %state = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[4]{0} get-tuple-element(%state), index=1
  %fusion.2 = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_add
  %gemm = (f32[4]{0}, s8[0]{0}) custom-call(%fusion.2), custom_call_target="__cublas$gemm"
  %y = f32[4]{0} get-tuple-element(%gemm), index=0
  ROOT %tuple.3 = (s32[], f32[4]{0}) tuple(%i, %y)
}

%cond (state.1: (s32[], f32[4])) -> pred[] {
  %state.1 = (s32[], f32[4]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %limit = s32[] constant(1000)
  ROOT %lt = pred[] compare(%i.1, %limit), direction=LT
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %copy.1 = f32[4]{0} copy(%a)
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %copy.1)
  %loop = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body
  %conv = (f32[4]{0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$convForward"
  ROOT %out = f32[4]{0} get-tuple-element(%loop), index=1
}
"""


def test_launch_counts_counts_loop_bodies_once_and_fusions_whole():
  counts = bench.launch_counts(_HLO)
  # entry: copy + cuDNN call; loop body: fusion + cuBLAS call; condition: compare. The fused
  # add and the bookkeeping (parameters, tuples, constants, the while itself) launch nothing.
  assert counts["kernels_by_opcode"] == {"copy": 1, "custom-call": 2, "fusion": 1, "compare": 1}
  assert counts["kernels"] == 5 and counts["kernels_in_loops"] == 3
  assert counts["custom_calls"] == {"__cudnn$convForward": 1, "__cublas$gemm": 1}
  with pytest.raises(ValueError, match="ENTRY"):
    bench.launch_counts(_HLO.replace("ENTRY ", ""))


def test_launch_counts_of_a_compiled_loop_do_not_depend_on_its_length():
  def program(n):
    return jax.jit(lambda x: jax.lax.fori_loop(0, n, lambda i, y: jnp.sin(y) @ y, x))

  x = jnp.ones((8, 8))
  short, long = (bench.launch_counts(program(n).lower(x).compile().as_text())
                 for n in (3, 300))
  assert short == long and short["kernels"] >= 2  # at least the sine and the matmul


def test_compile_target_devices_compile_without_placing_data():
  """``CompileTargetDevices`` (what ``--gpu_target`` uses) hand out shapes, not buffers, and every
  bench kind still compiles and reports memory and kernels; here over the CPU, for the toy MLP:
  the devices decide only where arguments go (the tiny run compiles DDPM++ for these kinds)."""
  devices = bench.CompileTargetDevices(jax.devices())
  placed = devices.put_batch(np.zeros((4, 2), np.float32))
  assert isinstance(placed, jax.ShapeDtypeStruct) and placed.sharding == devices.batch
  config = gaussian_mixture.get_config()
  forward = bench.bench_forward(config, devices, batch=2, steps=0, warmup=0)
  config.sampling.method = "ode"
  ode = bench.bench_sampler(config, devices, batch=2, repeats=0)
  for metrics in (forward, ode):
    assert metrics["compiled_bytes"] > 0 and metrics["kernels"] > 0, metrics
  assert forward["flops_per_call"] > 0


def _has_cuda_plugin() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("jax_plugins") is None:
    return False
  return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))


def test_gpu_target_compiles_for_an_h100_or_says_what_is_missing(tmp_path):
  """``--gpu_target``: with jax's CUDA plugin, the tiny train step and ODE sampler compile for an
  H100 (cuDNN convolutions, XLA:GPU memory), no GPU present; without it, a one-line error."""
  target = os.path.join(REPO, "gpu", "h100_sxm.txtpb")
  env = dict(os.environ, XLA_FLAGS=bench.TINY_XLA_FLAGS)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--tiny", "--gpu_target", target,
                         "--only", "train/ddpmpp/fp32,ode", "--out", str(tmp_path)],
                        cwd=REPO, env=env, capture_output=True, text=True, check=False)
  if not _has_cuda_plugin():
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "--gpu_target needs jax's CUDA plugin: pip install 'jax[cuda13]'"), proc.stderr[-2000:]
    return
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  (path,) = glob.glob(str(tmp_path / "speed_tiny_compile_only_nvidia_h100_80gb_hbm3_*.json"))
  with open(path) as f:
    result = json.load(f)
  assert result["device"]["platform"] == "gpu" and result["gpu_target"] == target
  train, ode = (r["metrics"] for r in result["records"])
  assert train["custom_calls"]["__cudnn$convBackwardFilter"] > 0, train
  assert ode["compiled_bytes"] > 0 and ode["kernels"] > 0, ode
