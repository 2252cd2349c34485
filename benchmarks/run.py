"""Speed benchmarks: train step, PC/EM samplers, ODE sampling, bits/dim, forward pass, MNIST.

``python -m benchmarks.run [--only train,sample,ode,bpd,forward,mnist] [--tiny] [--isolate]
[--compile_only | --gpu_target FILE] [--out benchmarks/results]`` (``--only`` also takes
case-name prefixes such as ``train/ncsnpp``) measures on whatever accelerator JAX sees
(``jax.devices()[0]``) and writes ``speed[_tiny][_compile_only]_<device>_<date>.json`` and
``.md`` (a table) to ``--out``.

Every case builds its model from a config file plus recorded overrides and random (untrained)
parameters through ``builders`` -- the same train step, sampler and bits/dim function as
``main.py`` -- feeds synthetic data of the config's shape, compiles ahead of time
(``compile_s``) and then times calls that end in ``block_until_ready``. Times are wall-clock
seconds.

* ``train``: one optimizer step (loss, gradient, Adam, EMA) with the train state donated; the
  median over ``>= 20`` timed steps after warm-up, and the same compiled with
  ``n_jitted_steps`` steps per call (``lax.scan``, time reported per step). FLOPs per step come
  from XLA's cost analysis of the compiled program.
* ``sample``: predictor-corrector sampling (reverse diffusion + Langevin) and Euler-Maruyama.
* ``ode`` / ``bpd``: probability-flow ODE sampling and bits/dim (Hutchinson), adaptive Tsit5 at
  ``rtol = atol = 1e-5``; ``nfe`` counts drift evaluations as scipy's ``nfev`` does (see
  ``ode_solvers``). With random parameters the NFE is not that of a trained model;
  ``ms_per_nfe`` is the comparable number.
* ``forward``: the network alone, evaluation mode.
* ``mnist``: training throughput of ``configs/vpsde_mnist.py`` (skipped when absent).

``--tiny`` runs one case per code path (``TINY_CASES``), shrunk (8 px images, ``nf = 8``,
batch 4, 3 timed steps, 10 sampler steps) and compiled with few optimizations, so the suite runs
on a CPU in about a minute; it checks the code paths, its times mean nothing.
``--isolate`` runs each case in a fresh process, so ``peak_bytes_in_use`` (a per-process
high-water mark) belongs to that case alone; use it on an accelerator.
``--compile_only`` compiles every selected case and runs none: FLOPs per step and XLA's memory
estimate (``compiled_bytes``) of the full-size programs, and a check that all of them build,
on a CPU before spending accelerator time. ``--gpu_target gpu/h100_sxm.txtpb`` does
the same for a GPU that is not there (XLA deviceless compilation; needs ``jax[cuda13]``, no
GPU): XLA:GPU's own buffer assignment and kernel count for that GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import builders
import datasets
import losses
from configs import apply_overrides, load_config
from infra import cpu_runtime
from infra.devices import Devices
from infra.provenance import device_slug, environment
from models import utils as mutils

GROUPS = ("train", "sample", "ode", "bpd", "forward", "mnist")
DDPMPP = "configs/vp/cifar10_ddpmpp_continuous.py"
NCSNPP = "configs/ve/cifar10_ncsnpp_continuous.py"
MNIST = "configs/vpsde_mnist.py"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shrinks the CIFAR-10 networks so that every case compiles and runs on a CPU in seconds.
TINY_MODEL = {"data.image_size": 8, "model.nf": 8, "model.ch_mult": (1,),
              "model.num_res_blocks": 1, "model.attn_resolutions": (8,)}

# One case per code path of this file (each compile costs a CPU ~10 s): fp32 and bf16, one and
# several steps per call, PC sampling, ODE, bits/dim, forward, MNIST. The other cases differ
# only in their config (the NCSN++ network, EM instead of PC).
TINY_CASES = ("train/ddpmpp/fp32", "train/ddpmpp/bf16/n_jitted=2", "sample/ddpmpp/pc",
              "ode/ddpmpp", "bpd/ddpmpp", "forward/ddpmpp/bf16", "mnist/fp32")
TINY_XLA_FLAGS = "--xla_llvm_disable_expensive_passes=true --xla_backend_optimization_level=0"

# Published numbers of another implementation and this project's targets, for the full-size
# cases on one H100 (times per step / per call; see benchmarks/README.md).
REFERENCE = {
    "train/ddpmpp/fp32": ("eager 128-166 ms; torch.compile 101.6 ms; GPU-busy 85.5 ms", "<= 50 ms"),
    "train/ddpmpp/bf16": ("GPU-busy 48.5 ms", "<= 32 ms"),
    "train/ddpmpp/fp32/remat": ("peak memory 11.6 GiB", "less memory than train/ddpmpp/fp32"),
    "train/ncsnpp/fp32": ("145 ms", "<= 60 ms"),
    "forward/ddpmpp/fp32": ("276 ms", "<= 140 ms"),
    "forward/ddpmpp/bf16": ("225 ms", "<= 70 ms"),
    "sample/ddpmpp/em": ("40.3 s", "<= 12 s"),
    "sample/ddpmpp/pc": ("85.8 s (2000 calls)", "<= 25 s"),
    "bpd/ddpmpp": ("155 ms per evaluation", "<= 50 ms per evaluation"),
}


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
  """One measurement: ``kind`` picks the function, ``config`` + ``overrides`` the model.

  ``options`` holds the measurement's own sizes (batch, steps, repeats, ...).
  """
  name: str
  group: str
  kind: str
  config: str
  overrides: Tuple[Tuple[str, Any], ...]
  options: Tuple[Tuple[str, Any], ...]


def _case(name: str, group: str, kind: str, config: str, overrides: Dict[str, Any],
          **options) -> Case:
  return Case(name, group, kind, config, tuple(sorted(overrides.items())),
              tuple(sorted(options.items())))


def suite(tiny: bool, compile_only: bool = False) -> List[Case]:
  """The cases in run order: every one at full size, or ``TINY_CASES`` shrunk for CPUs.

  ``compile_only``: the same programs, compiled and not run (no timed calls, no sampler
  repeats): FLOPs and XLA's memory estimate, and proof that every case builds, on any machine.
  """
  base = dict(TINY_MODEL) if tiny else {}
  batch = 4 if tiny else 128
  timed, warmup, n_jitted = (3, 1, 2) if tiny else (20, 3, 5)
  repeats = 0 if compile_only else 1
  if compile_only:
    timed = warmup = 0
  sampler_steps = 10 if tiny else 1000
  cases = []
  for short, config in (("ddpmpp", DDPMPP), ("ncsnpp", NCSNPP)):
    for precision in ("fp32", "bf16"):
      over = dict(base, **{"training.batch_size": batch,
                           "training.mixed_precision": precision == "bf16"})
      cases.append(_case(f"train/{short}/{precision}", "train", "train", config, over,
                         n_jitted=1, steps=timed, warmup=warmup))
      cases.append(_case(f"train/{short}/{precision}/n_jitted={n_jitted}", "train", "train",
                         config, dict(over, **{"training.n_jitted_steps": n_jitted}),
                         n_jitted=n_jitted, steps=timed, warmup=warmup))
    if short == "ddpmpp":  # what recomputing each block (training.remat) costs and saves
      cases.append(_case(f"train/{short}/fp32/remat", "train", "train", config,
                         dict(base, **{"training.batch_size": batch, "training.remat": True}),
                         n_jitted=1, steps=timed, warmup=warmup))
  for name, predictor, corrector in (("pc", "reverse_diffusion", "langevin"),
                                     ("em", "euler_maruyama", "none")):
    cases.append(_case(f"sample/ddpmpp/{name}", "sample", "sample", DDPMPP,
                       dict(base, **{"sampling.predictor": predictor,
                                     "sampling.corrector": corrector}),
                       batch=batch, num_steps=sampler_steps, repeats=repeats))
  cases.append(_case("ode/ddpmpp", "ode", "sample", DDPMPP,
                     dict(base, **{"sampling.method": "ode"}), batch=batch, repeats=repeats))
  cases.append(_case("bpd/ddpmpp", "bpd", "bpd", DDPMPP, base, batch=batch, repeats=repeats))
  cases.append(_case("bpd/ddpmpp/compile_only", "bpd", "bpd", DDPMPP, base,
                     batch=16 if tiny else 1024, repeats=0))
  for precision in ("fp32", "bf16"):
    cases.append(_case(f"forward/ddpmpp/{precision}", "forward", "forward", DDPMPP,
                       dict(base, **{"training.mixed_precision": precision == "bf16"}),
                       batch=8 if tiny else 1024, steps=timed, warmup=warmup))
  for precision in ("fp32", "bf16"):
    over = {"training.mixed_precision": precision == "bf16"}
    if tiny:  # MNIST's own 28 x 28 x 1 images, the tiny network without attention
      over.update(TINY_MODEL, **{"data.image_size": 28, "model.attn_resolutions": (),
                                 "training.batch_size": batch})
    cases.append(_case(f"mnist/{precision}", "mnist", "train", MNIST, over, n_jitted=1,
                       steps=timed, warmup=warmup))
  return [c for c in cases if c.name in TINY_CASES] if tiny else cases


# ----------------------------------------------------------------------------- compile targets


class CompileTargetDevices(Devices):
  """Devices to compile for, present or not: placing an array gives its ``jax.ShapeDtypeStruct``
  with the sharding -- enough to lower and compile, nothing to run (so ``--compile_only``)."""

  def put(self, tree: Any, sharding: Optional[jax.sharding.NamedSharding] = None) -> Any:
    sharding = self.replicated if sharding is None else sharding
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), tree)

  def put_batch(self, local: np.ndarray, stacked: bool = False) -> Any:
    return self.put(local, self.stacked_batch if stacked else self.batch)


def gpu_target_devices(target_config: str) -> CompileTargetDevices:
  """One GPU described by a ``GpuTargetConfig`` text proto (``gpu/h100_sxm.txtpb``), no GPU needed.

  XLA's deviceless compilation through jax's CUDA plugin (``pip install 'jax[cuda13]'``); this
  process then runs everything else on the CPU, so call it before JAX starts a backend.
  """
  with open(target_config) as f:
    text = f.read()
  jax.config.update("jax_platforms", "cpu")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=text, topology="1x1x1")
  except NotImplementedError as e:
    raise SystemExit(f"--gpu_target needs jax's CUDA plugin: pip install 'jax[cuda13]' (no GPU is "
                     f"needed) ({e}).") from e
  except Exception as e:  # pylint: disable=broad-except  (XLA's runtime error type)
    raise SystemExit(f"--gpu_target {target_config}: not a GpuTargetConfig text proto "
                     f"({str(e).splitlines()[0]}).") from e
  return CompileTargetDevices(topology.devices[:1])


# ----------------------------------------------------------------------------- measuring


def _flops(compiled) -> Optional[float]:
  """FLOPs of one call from XLA's cost analysis (a dict, or a list of one per module); None
  where the backend reports none (XLA:GPU compiling without a GPU)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops is not None and flops > 0 else None


def _compiled_bytes(compiled) -> Optional[int]:
  """Device memory one call needs per XLA: arguments + outputs + temporaries - donated aliases."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


# Instructions of a scheduled HLO module that launch no work of their own.
_NO_LAUNCH = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional",
    "call", "after-all", "add-dependency", "opt-barrier", "domain", "partition-id", "replica-id"})
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?[\w.\-]+ = .*?\s([a-z][\w\-]*)\(")
_CALLED = re.compile(r"(?:body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)"
                     r"|branch_computations=\{([^}]*)\}")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def launch_counts(hlo_text: str) -> Dict[str, Any]:
  """Work items (GPU: kernel launches) of one call of an optimized HLO module.

  Counts the instructions of the entry computation and of the loop bodies, branches and calls it
  runs -- each loop body once, whatever its trip count -- except bookkeeping ones
  (``_NO_LAUNCH``); a fusion counts once, its inside not at all. ``kernels``: the total, of which
  ``kernels_in_loops`` sit in loop bodies and conditions (run once per iteration; the rest once
  per call); ``custom_calls``: library calls (cuDNN convolutions, cuBLAS GEMMs, ...) by target.
  """
  computations: Dict[str, List[str]] = {}
  entry, lines = None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      lines = computations.setdefault(header.group(2), [])
      entry = header.group(2) if header.group(1) else entry
    elif line.startswith("}"):
      lines = None
    elif lines is not None:
      lines.append(line)
  if entry is None:
    raise ValueError("No ENTRY computation in the HLO text.")
  opcodes: Dict[str, int] = {}
  custom_calls: Dict[str, int] = {}
  in_loops = 0
  pending, seen = [(entry, False)], set()
  while pending:
    name, looped = pending.pop()
    if name in seen or name not in computations:
      continue
    seen.add(name)
    for line in computations[name]:
      instruction = _INSTRUCTION.match(line)
      if not instruction:
        continue
      opcode = instruction.group(1)
      if opcode in ("while", "conditional", "call"):
        for single, branches in _CALLED.findall(line):
          called = [single] if single else [b.strip().lstrip("%") for b in branches.split(",")]
          pending += [(c, looped or opcode == "while") for c in called]
      if opcode in _NO_LAUNCH:
        continue
      opcodes[opcode] = opcodes.get(opcode, 0) + 1
      in_loops += looped
      if opcode == "custom-call":
        target = _TARGET.search(line)
        key = target.group(1) if target else "?"
        custom_calls[key] = custom_calls.get(key, 0) + 1
  return {"kernels": sum(opcodes.values()), "kernels_in_loops": in_loops,
          "kernels_by_opcode": opcodes, "custom_calls": custom_calls}


def _peak_bytes() -> Optional[int]:
  """The process's high-water mark of device memory (None where unsupported, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _compile(fn: Callable, *args) -> Tuple[Any, float]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _timed(call: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(call())
  return time.perf_counter() - start


# Initial parameters per architecture (the config's model and data sections and seed), so that
# fp32/bf16 variants and the train/sampling cases of one network share one (slow) init.
_PARAMS_CACHE: Dict[str, Any] = {}


def _model_and_params(config: ml_collections.ConfigDict):
  """``(model, params)``: float32 parameters whatever ``training.mixed_precision`` says."""
  key = json.dumps({"model": config.model.to_dict(), "data": config.data.to_dict(),
                    "seed": config.seed}, sort_keys=True, default=list)
  if key not in _PARAMS_CACHE:
    fp32 = ml_collections.ConfigDict(config.to_dict())
    fp32.training.mixed_precision = False
    _PARAMS_CACHE[key] = builders.init_model(jax.random.PRNGKey(config.seed), fp32)[1]
  # A private copy: the train state is donated and would delete the cached buffers.
  return builders.build_model(config), jax.tree_util.tree_map(jnp.copy, _PARAMS_CACHE[key])


def synthetic_images(shape: Tuple[int, ...], centered: bool, seed: int = 0) -> np.ndarray:
  """Uniform float32 data in the model's range, ``[-1, 1]`` if ``centered`` else ``[0, 1]``."""
  x = np.random.default_rng(seed).random(shape, dtype=np.float32)
  return 2.0 * x - 1.0 if centered else x


def bench_train(config: ml_collections.ConfigDict, devices: Devices, *, n_jitted: int,
                steps: int, warmup: int) -> Dict[str, Any]:
  """Train-step time: ``steps`` timed calls of ``n_jitted`` steps each after ``warmup`` calls.

  ``steps = 0``: compile only (FLOPs, memory estimate, compile time).
  """
  batch_size = config.training.batch_size
  devices.check_batch(batch_size, "training.batch_size")
  sde = builders.build_sde(config)
  model, params = _model_and_params(config)
  optimizer = builders.build_optimizer(config)
  state = devices.put(losses.init_train_state(jax.random.PRNGKey(1), params, optimizer))
  step_fn = builders.build_train_step(config, sde, model, optimizer)
  state_sharding = jax.tree_util.tree_map(lambda _: devices.replicated, state)
  shape = datasets.input_shape(config, batch_size)
  if n_jitted == 1:
    data = synthetic_images(shape, config.data.centered)
    batch = devices.put_batch(data)
    fn, batch_sharding = step_fn, devices.batch
  else:
    data = synthetic_images((n_jitted,) + shape, config.data.centered)
    batch = devices.put_batch(data, stacked=True)
    fn, batch_sharding = losses.get_multi_step_fn(step_fn), devices.stacked_batch
  jitted = jax.jit(fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, devices.replicated), donate_argnums=0)
  compiled, compile_s = _compile(jitted, state, batch)
  flops_per_step = _flops(compiled)
  if flops_per_step is not None and n_jitted > 1:
    # XLA's cost analysis has counted a loop body once, whatever its trip count; compare with
    # one step (lowered, not compiled: cheap) so a future XLA that multiplies is also right.
    one_batch = jax.ShapeDtypeStruct(batch.shape[1:], batch.dtype)
    one_step = _flops(jax.jit(step_fn).lower(state, one_batch))
    if one_step and flops_per_step > 0.5 * (n_jitted + 1) * one_step:
      flops_per_step /= n_jitted
  kernels = launch_counts(compiled.as_text())
  # The scan's body runs every step, the rest (e.g. layout changes of the state) once per call.
  per_step = (kernels["kernels"] if n_jitted == 1 else kernels["kernels_in_loops"]
              + (kernels["kernels"] - kernels["kernels_in_loops"]) / n_jitted)
  facts = {"batch_size": batch_size, "n_jitted_steps": n_jitted, "compile_s": compile_s,
           "flops_per_step": flops_per_step, "compiled_bytes": _compiled_bytes(compiled),
           **kernels, "kernels_per_step": per_step,
           "num_params": mutils.parameter_count(state.params)}
  if steps < 1:
    return facts

  def call():
    nonlocal state
    state, loss = compiled(state, batch)
    return state, loss

  for _ in range(warmup):
    _timed(call)
  times = [_timed(call) for _ in range(steps)]
  # Back-to-back calls with one final wait: the throughput a training loop sees.
  start = time.perf_counter()
  for _ in range(steps):
    call()
  jax.block_until_ready(state)
  pipelined = (time.perf_counter() - start) / steps
  if not np.isfinite(float(jax.device_get(call()[1]).mean())):
    raise FloatingPointError("The training loss became non-finite.")
  step_s = statistics.median(times) / n_jitted
  return {
      **facts, "timed_calls": steps, "warmup_calls": warmup,
      "ms_per_step": 1e3 * step_s,
      "ms_per_step_min": 1e3 * min(times) / n_jitted,
      "ms_per_step_pipelined": 1e3 * pipelined / n_jitted,
      "images_per_s": batch_size / step_s,
      "tflops_per_s": flops_per_step / step_s / 1e12 if flops_per_step else None,
      "peak_bytes_in_use": _peak_bytes(),
  }


def _compile_and_time(fn: Callable, args: Tuple[Any, ...], devices: Devices, repeats: int,
                      batch: int) -> Dict[str, Any]:
  """Compiles the jitted ``fn(rng, *args) -> (x, nfe)`` (a sampler or a bits/dim function) and
  times ``repeats`` calls with fresh keys; ``args`` already on ``devices``."""
  compiled, compile_s = _compile(fn, devices.put(jax.random.PRNGKey(0)), *args)
  result: Dict[str, Any] = {"batch_size": batch, "compile_s": compile_s, "repeats": repeats,
                            "compiled_bytes": _compiled_bytes(compiled),
                            **launch_counts(compiled.as_text())}
  if repeats < 1:
    result["peak_bytes_in_use"] = _peak_bytes()
    return result
  walls, nfes = [], []
  for i in range(repeats):
    start = time.perf_counter()
    x, nfe = jax.block_until_ready(compiled(jax.random.PRNGKey(i + 1), *args))
    walls.append(time.perf_counter() - start)
    nfes.append(int(nfe))
  if not np.all(np.isfinite(np.asarray(x))):
    raise FloatingPointError("The sampler returned non-finite values.")
  wall = statistics.median(walls)
  nfe = int(statistics.median(nfes))
  result.update({"wall_s": wall, "images_per_s": batch / wall, "nfe": nfe,
                 "ms_per_nfe": 1e3 * wall / nfe, "peak_bytes_in_use": _peak_bytes()})
  return result


def bench_sampler(config, devices, *, batch: int, repeats: int,
                  num_steps: Optional[int] = None) -> Dict[str, Any]:
  """Wall time and NFE of the config's sampler (``sampling.*``, as ``main.py`` samples), from
  random parameters; ``num_steps`` overrides the ``sde.N`` steps; ``repeats=0``: compile only."""
  devices.check_batch(batch, "batch")
  sde = builders.build_sde(config)
  model, params = _model_and_params(config)
  sampler = builders.build_sampler(config, sde, model, devices, batch, num_steps=num_steps)
  result = _compile_and_time(sampler, (devices.put(params),), devices, repeats, batch)
  cfg = config.sampling
  result["method"] = cfg.method
  if cfg.method.lower() == "pc":
    result.update(predictor=cfg.predictor, corrector=cfg.corrector,
                  num_steps=sde.N if num_steps is None else num_steps)
  else:
    result.update(rtol=cfg.ode_rtol, atol=cfg.ode_atol, solver=cfg.ode_solver)
  return result


def bench_bpd(config, devices, *, batch: int, repeats: int) -> Dict[str, Any]:
  """Bits/dim of a fixed synthetic batch as evaluation computes it (``eval.*``: Hutchinson,
  tolerances, dequantization); ``repeats=0``: compile only."""
  devices.check_batch(batch, "batch")
  sde = builders.build_sde(config)
  model, params = _model_and_params(config)
  bpd_fn = builders.build_bpd_fn(config, sde, model, devices)
  # Images in data space ([0, 1]), an argument rather than a constant folded into the program.
  images = devices.put_batch(synthetic_images(datasets.input_shape(config, batch), False))
  result = _compile_and_time(bpd_fn, (devices.put(params), images), devices, repeats, batch)
  ev = config.eval
  result.update(rtol=ev.rtol, atol=ev.atol, hutchinson_type=ev.hutchinson_type,
                ode_solver=ev.ode_solver)
  return result


def bench_forward(config, devices, *, batch: int, steps: int, warmup: int) -> Dict[str, Any]:
  """One network evaluation (evaluation mode) at ``batch``: median of ``steps`` calls
  (``steps = 0``: compile only)."""
  devices.check_batch(batch, "batch")
  model, params = _model_and_params(config)
  params = devices.put(params)
  x = devices.put_batch(synthetic_images(datasets.input_shape(config, batch),
                                         config.data.centered))
  labels = devices.put_batch(np.linspace(0.0, 999.0, batch, dtype=np.float32))
  jitted = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y, train=False),
                   out_shardings=devices.batch)
  compiled, compile_s = _compile(jitted, params, x, labels)
  flops = _flops(compiled)
  facts = {"batch_size": batch, "compile_s": compile_s, "flops_per_call": flops,
           "compiled_bytes": _compiled_bytes(compiled), **launch_counts(compiled.as_text())}
  if steps < 1:
    return facts
  for _ in range(warmup):
    _timed(lambda: compiled(params, x, labels))
  times = [_timed(lambda: compiled(params, x, labels)) for _ in range(steps)]
  call_s = statistics.median(times)
  return {**facts, "timed_calls": steps, "warmup_calls": warmup, "ms_per_call": 1e3 * call_s,
          "ms_per_call_min": 1e3 * min(times), "images_per_s": batch / call_s,
          "tflops_per_s": flops / call_s / 1e12 if flops else None,
          "peak_bytes_in_use": _peak_bytes()}


KINDS = {"train": bench_train, "sample": bench_sampler, "bpd": bench_bpd,
         "forward": bench_forward}


def select(cases: Sequence[Case], only: str) -> List[Case]:
  """Cases whose group is listed in the comma-separated ``only`` or whose name starts with an
  entry (``train/ddpmpp`` selects the four DDPM++ train cases)."""
  wanted = [w.strip() for w in only.split(",") if w.strip()]
  return [c for c in cases if any(c.group == w or c.name.startswith(w) for w in wanted)]


def run_case(case: Case, devices: Devices) -> Dict[str, Any]:
  """The record of one case; failures are recorded (``status``), not raised."""
  record: Dict[str, Any] = {"name": case.name, "group": case.group, "kind": case.kind,
                            "config": case.config, "overrides": dict(case.overrides),
                            "options": dict(case.options)}
  precision = "bf16" if dict(case.overrides).get("training.mixed_precision") else "fp32"
  record["precision"] = precision
  if not os.path.exists(os.path.join(_REPO, case.config)):
    record.update(status="skipped", note=f"{case.config} does not exist")
    return record
  start = time.perf_counter()
  try:
    config = apply_overrides(load_config(case.config), case.overrides)
    record["metrics"] = KINDS[case.kind](config, devices, **dict(case.options))
    record["status"] = "ok"
  except Exception as e:  # pylint: disable=broad-except
    # One case running out of memory must not lose the others' results.
    record.update(status="error", error=f"{type(e).__name__}: {e}",
                  traceback=traceback.format_exc(limit=8))
  record["case_s"] = time.perf_counter() - start
  return record


def _run_isolated(case: Case, tiny: bool, compile_only: bool,
                  gpu_target: Optional[str]) -> Dict[str, Any]:
  """``run_case`` in a fresh Python process (its own device-memory high-water mark)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "record.json")
    cmd = [sys.executable, "-m", "benchmarks.run", "--case", case.name, "--case_out", out]
    cmd += (["--tiny"] if tiny else []) + (["--compile_only"] if compile_only else [])
    cmd += ["--gpu_target", gpu_target] if gpu_target else []
    proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and os.path.exists(out):
      with open(out) as f:
        return json.load(f)
  return {"name": case.name, "group": case.group, "kind": case.kind, "config": case.config,
          "overrides": dict(case.overrides), "options": dict(case.options), "status": "error",
          "error": f"child process exited with {proc.returncode}: {proc.stderr[-2000:]}"}


# ----------------------------------------------------------------------------- reports


def _fmt(value: Optional[float], spec: str) -> str:
  return "" if value is None else format(value, spec)


def markdown(result: Dict[str, Any]) -> str:
  """The results as a markdown table, with the reference numbers for full-size cases."""
  dev, ver = result["device"], result["versions"]
  lines = [
      f"# Speed benchmarks{' (tiny)' if result['tiny'] else ''}"
      f"{' (compile only)' if result.get('compile_only') else ''}: {dev['device_kind']} "
      f"x{dev['count']} ({dev['platform']}"
      f"{'; compiled for it on a CPU, not run' if result.get('gpu_target') else ''})", "",
      f"{result['date']}; jax {ver['jax']}, flax {ver['flax']}; `{result['command']}`", "",
      "| case | prec. | batch | time | images/s | GFLOP/step | TFLOP/s | peak GiB | XLA GiB | "
      "kernels | NFE | ms/NFE | compile s | reference | target |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for rec in result["records"]:
    ref, target = ("", "") if result["tiny"] else REFERENCE.get(rec["name"], ("", ""))
    if rec["status"] != "ok":
      lines.append(f"| {rec['name']} | {rec.get('precision', '')} | | {rec['status']}: "
                   f"{rec.get('note') or rec.get('error', '')[:80]} | | | | | | | | | | {ref} | "
                   f"{target} |")
      continue
    m = rec["metrics"]
    if "ms_per_step" in m:
      when = f"{m['ms_per_step']:.2f} ms/step"
    elif "ms_per_call" in m:
      when = f"{m['ms_per_call']:.2f} ms/call"
    elif "wall_s" in m:
      when = f"{m['wall_s']:.3f} s"
    else:
      when = "compile only"
    peak, estimate = m.get("peak_bytes_in_use"), m.get("compiled_bytes")
    flops = m.get("flops_per_step", m.get("flops_per_call"))
    lines.append(
        f"| {rec['name']} | {rec['precision']} | {m['batch_size']} | {when} | "
        f"{_fmt(m.get('images_per_s'), '.1f')} | {_fmt(flops / 1e9 if flops else None, '.1f')} | "
        f"{_fmt(m.get('tflops_per_s'), '.3g')} | {_fmt(peak / 2**30 if peak else None, '.2f')} | "
        f"{_fmt(estimate / 2**30 if estimate else None, '.2f')} | "
        f"{_fmt(m.get('kernels_per_step', m.get('kernels')), '.0f')} | "
        f"{_fmt(m.get('nfe'), 'd')} | "
        f"{_fmt(m.get('ms_per_nfe'), '.2f')} | {m['compile_s']:.1f} | {ref} | {target} |")
  lines += ["", "Peak GiB: device high-water mark of the process so far"
            + (" (each case in its own process)." if result["isolated"] else
               " (cumulative over cases; use --isolate for per-case peaks).")
            + " XLA GiB: the compiled program's arguments + outputs + temporaries - donated"
            " buffers, XLA's estimate for this backend. GFLOP/step: XLA's cost analysis of one"
            " train step or forward call (sampler loops are not multiplied out, so not shown)."
            " Kernels: work items (on a GPU, kernel launches) of the optimized program, per"
            " step for train cases (a scan's body plus 1/n of the rest), else per call with"
            " each loop body counted once."]
  return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
  """Runs the selected cases; writes and returns ``{device, versions, ..., records: [...]}``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=",".join(GROUPS),
                      help=f"comma-separated groups ({', '.join(GROUPS)}) or case-name prefixes")
  parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke run")
  parser.add_argument("--isolate", action="store_true", help="one process per case")
  parser.add_argument("--compile_only", action="store_true",
                      help="compile every case, run none: FLOPs and XLA's memory estimates")
  parser.add_argument("--gpu_target", metavar="TARGET_CONFIG",
                      help="compile for the GPU this GpuTargetConfig text proto describes "
                      "(e.g. gpu/h100_sxm.txtpb) without one; implies "
                      "--compile_only; needs jax's CUDA plugin")
  parser.add_argument("--out", default=os.path.join(_REPO, "benchmarks", "results"))
  parser.add_argument("--case", help=argparse.SUPPRESS)
  parser.add_argument("--case_out", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.tiny:
    # Tiny runs are dominated by compilation; their run times mean nothing anyway.
    jax.config.update("jax_disable_most_optimizations", True)
  if args.gpu_target:
    args.compile_only = True
    devices = gpu_target_devices(args.gpu_target)
  else:
    devices = Devices()
  cases = suite(args.tiny, args.compile_only)

  if args.case:  # child of --isolate
    (case,) = [c for c in cases if c.name == args.case]
    with open(args.case_out, "w") as f:
      json.dump(run_case(case, devices), f)
    return {}

  selected = select(cases, args.only)
  if not selected:
    parser.error(f"--only {args.only!r} selects no case; groups: {', '.join(GROUPS)}; cases: "
                 f"{', '.join(c.name for c in cases)}")
  now = datetime.datetime.now(datetime.timezone.utc)
  result = dict(environment(devices), date=now.isoformat(timespec="seconds"), tiny=args.tiny,
                compile_only=args.compile_only, gpu_target=args.gpu_target,
                isolated=args.isolate, command=" ".join(["python -m benchmarks.run"] + argv),
                records=[])
  for case in selected:
    record = (_run_isolated(case, args.tiny, args.compile_only, args.gpu_target)
              if args.isolate else run_case(case, devices))
    result["records"].append(record)
    print(f"{case.name}: {record['status']} "
          f"{json.dumps(record.get('metrics', record.get('error', record.get('note'))))}",
          flush=True)

  stem = (f"speed{'_tiny' if args.tiny else ''}{'_compile_only' if args.compile_only else ''}"
          f"_{device_slug(result['device']['device_kind'])}_{now.strftime('%Y-%m-%dT%H%MZ')}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, stem + ".json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(args.out, stem + ".md"), "w") as f:
    f.write(markdown(result))
  print(f"wrote {os.path.join(args.out, stem)}.json/.md")
  return result


if __name__ == "__main__":
  if "--tiny" in sys.argv[1:]:
    # Read when the backend starts (first device query, inside main): tiny runs are dominated by
    # XLA's CPU compile, which these flags cut about threefold; run times do not matter there.
    os.environ.setdefault("XLA_FLAGS", TINY_XLA_FLAGS)
  # As main.py runs: the times are those a user gets.
  cpu_runtime.configure()
  outcome = main()
  sys.exit(1 if any(r["status"] == "error" for r in outcome.get("records", [])) else 0)
