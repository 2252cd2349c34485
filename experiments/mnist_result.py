"""The MNIST result in one command: train for a time budget, then bits/dim and samples.

``python -m experiments.mnist_result --config configs/vpsde_mnist.py
--override data.data_dir=.data/mnist --train_minutes 5 --deadline_minutes 9``

One run, three phases, one wall-clock deadline (``--deadline_minutes``, counted from the start,
start-up and compilation included):

1. Training exactly as ``main.py --mode train`` does (the config's data stream, optimizer, EMA,
   ``training.n_jitted_steps``; :func:`builders.build_train_steps`) until ``--train_minutes`` of
   training wall time have passed (or ``--max_steps``). The training loss is logged every
   ``--log_every`` steps (mean over those steps: the loss curve). At ``--checkpoints`` evenly
   spaced fractions of the budget (and at the end) the EMA network's bits/dim is measured on the
   first ``--probe_examples`` test images with fixed noise (time to bits/dim, as
   ``experiments.time_to_bpd``; the training clock stops meanwhile).
2. ``--num_samples`` samples of the final EMA network with the config's sampler, saved as one PNG
   grid (NFE and time recorded); with ``--classifier PATH`` (or the MNIST classifier's cached
   parameters when :mod:`evaluation.mnist_classifier` finds them) also its sample metrics.
3. Bits/dim of the final EMA network over the test split in stored order, batch by batch, until
   the split is done or the deadline is near: the result states how many images (a fixed-order
   prefix), the standard error and the mean NFE.

Outputs (``--out``, four files): ``mnist_result_<config>_<device>_<time>.json``, rewritten after
every phase and every evaluated batch so a cut-off run keeps what it measured;
``..._samples.npz`` (uint8) and ``..._samples.png``; ``..._curves.png`` (loss and bits/dim against
training time). A machine without matplotlib or Pillow skips those pictures; ``--plot JSON``
draws them later next to the JSON. No checkpoints are written.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import ml_collections
import numpy as np

import builders
import datasets
import figures
from configs import apply_overrides, load_config, parse_override
from evaluation import mnist_classifier
from experiments.time_to_bpd import bpd_blocks, first_test_images, measure_bpd
from experiments.timed_training import TimedTraining
from infra import outputs
from infra.commands import one_line_errors
from infra.devices import Devices, gather
from infra.provenance import device_slug, environment

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SAFETY_S = 20.0  # kept free before the deadline for the last write


class Deadline:
  """Seconds left until ``start + minutes``; ``clock`` is injectable for tests."""

  def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._end = clock() + 60.0 * minutes

  def left(self) -> float:
    return self._end - self._clock()


def _probe_marks(train_minutes: float, checkpoints: int) -> List[float]:
  """Training times (s) of the intermediate bits/dim probes: ``k / (checkpoints + 1)`` of the
  budget, ``k = 1 .. checkpoints``; the final probe follows the last step."""
  budget = 60.0 * train_minutes
  return [budget * k / (checkpoints + 1) for k in range(1, checkpoints + 1)]


def train_phase(config: ml_collections.ConfigDict, devices: Devices, *, train_minutes: float,
                max_steps: int, log_every: int, checkpoints: int, probe_blocks, deadline: Deadline,
                record: Callable[[], None], result: Dict[str, Any]):
  """Trains for the budget; fills ``result['loss_curve']`` and ``result['probes']``.

  Returns ``(sde, model, state)`` after the last step.
  """
  trainer = TimedTraining(config, devices)
  bpd_fn = builders.build_bpd_fn(config, trainer.sde, trainer.model, devices)
  result["num_params"] = trainer.num_params
  result["loss_curve"], result["probes"] = [], []
  budget, marks = 60.0 * train_minutes, _probe_marks(train_minutes, checkpoints)
  # Stop training early enough that the final probe and the sampling phase still fit.
  reserve_s = 60.0

  def probe() -> None:
    point = {"step": trainer.step, "images": trainer.step * config.training.batch_size,
             "train_s": trainer.train_s}
    point.update(measure_bpd(bpd_fn, trainer.state.ema_params, probe_blocks, devices,
                             seed=config.seed + 3))
    result["probes"].append(point)
    print(f"step {trainer.step}: {trainer.train_s:.0f} s of training, bits/dim "
          f"{point['bpd']:.4f} +- {point['bpd_stderr']:.4f} on {point['examples']} test images "
          f"({point['nfe']:.0f} NFE, {point['eval_s']:.1f} s)", flush=True)
    record()

  while (trainer.step < max_steps and trainer.train_s < budget
         and deadline.left() > reserve_s + _SAFETY_S):
    step = trainer.step
    loss = trainer.run_until(min(step + log_every - step % log_every, max_steps))
    step, train_s = trainer.step, trainer.train_s
    result["first_call_s"] = trainer.first_call_s
    result["loss_curve"].append({"step": step, "train_s": train_s, "loss": loss})
    result.update(steps=step, train_s=train_s, images_per_s=trainer.images_per_s)
    if marks and train_s >= marks[0]:
      marks = [m for m in marks if m > train_s]
      probe()
  probe()
  return trainer.sde, trainer.model, trainer.state


def sample_phase(config: ml_collections.ConfigDict, devices: Devices, sde, model, params, *,
                 num_samples: int, path: str, classifier: Optional[str]) -> Dict[str, Any]:
  """Draws ``num_samples`` samples in one batch, saves the PNG grid; returns NFE, time and (with
  a classifier) the MNIST sample metrics."""
  devices.check_batch(num_samples, "--num_samples")
  sampler = builders.build_sampler(config, sde, model, devices, num_samples)
  _, inverse_scaler = datasets.data_scalers(config)
  rng = jax.random.PRNGKey(config.seed + 4)
  start = time.perf_counter()
  samples, nfe = sampler(rng, params)
  samples = np.asarray(inverse_scaler(gather(samples)))
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(sampler(jax.random.fold_in(rng, 1), params))
  run_s = time.perf_counter() - start
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError("The samples are not finite.")
  stem = os.path.splitext(path)[0]
  # uint8 as the data are stored: 1000 MNIST samples take 0.8 MB, the PNG comes from them later
  # (``--plot``) where Pillow is missing.
  outputs.save_npz(stem + ".npz", samples=np.round(np.clip(samples, 0, 1) * 255).astype(np.uint8))
  out = {"num_samples": num_samples, "sampler": builders.sampler_tag(config), "nfe": float(nfe),
         "first_call_s": first_s, "run_s": run_s, "npz": os.path.basename(stem + ".npz")}
  if importlib.util.find_spec("PIL") is not None:
    outputs.save_image_grid(samples, path)
    out["png"] = os.path.basename(path)
  out["metrics"] = _sample_metrics(samples, classifier, config)
  return out


def _sample_metrics(samples: np.ndarray, classifier: Optional[str],
                    config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The MNIST classifier's sample metrics against the test split, or why there are none (the
  classifier is not trained here: a device's minutes are for the score model)."""
  path = classifier or mnist_classifier.default_path()
  if not os.path.isfile(path):
    return {"skipped": f"no MNIST classifier at {path} ({mnist_classifier.COMMAND} trains it)"}
  params = mnist_classifier.load(path).params
  test = mnist_classifier.load_mnist(config.data.data_dir, "test")
  reference = mnist_classifier.reference_statistics(params, test.images)
  return mnist_classifier.mnist_metrics(params, samples, reference)


def full_bpd_phase(bpd_fn, params, blocks: Sequence[np.ndarray], devices: Devices, *, seed: int,
                   split_examples: int, deadline: Deadline, on_batch: Callable[[Dict], None]
                   ) -> Dict[str, Any]:
  """Bits/dim over ``blocks`` (the test split in stored order), one block at a time, while time
  is left.

  A block starts only when the slowest block so far fits before the deadline, so the result is a
  fixed-order prefix of ``examples`` images (``complete`` when every block was evaluated).
  ``on_batch(result)`` is called after every block with the result so far.
  """
  values, nfes, slowest = [], [], 0.0
  total = sum(len(b) for b in blocks)
  out: Dict[str, Any] = {"split_examples": split_examples}
  for k, (bpd, nfe, seconds) in enumerate(bpd_blocks(bpd_fn, params, blocks, devices, seed)):
    values.append(bpd)
    nfes.append(nfe)
    slowest = max(slowest, seconds)
    flat = np.concatenate(values)
    out.update(examples=int(flat.size), bpd=float(flat.mean()),
               bpd_stderr=(float(flat.std(ddof=1) / np.sqrt(flat.size)) if flat.size > 1
                           else float("nan")),
               nfe=float(np.mean(nfes)), complete=flat.size == total)
    on_batch(dict(out))
    if k + 1 < len(blocks) and deadline.left() < slowest + _SAFETY_S:
      break
  return out


def plot(result: Dict[str, Any], path: str) -> Optional[str]:
  """Loss and probe bits/dim against training time, as one PNG; ``None`` without matplotlib."""
  if not figures.available() or not result.get("loss_curve"):
    return None
  return figures.training_curves(
      [p["train_s"] for p in result["loss_curve"]], [p["loss"] for p in result["loss_curve"]],
      [p["train_s"] for p in result.get("probes", [])],
      [p["bpd"] for p in result.get("probes", [])], path,
      title=f"{result['config']} on {result['device']['device_kind']}: "
            f"{result.get('steps', 0)} steps")


def redraw(json_path: str) -> Dict[str, Any]:
  """The pictures of an earlier result, next to its JSON: the curves and, from the saved
  samples, their PNG grid (for results of machines without matplotlib or Pillow)."""
  stem = os.path.splitext(json_path)[0]
  with open(json_path) as f:
    result = json.load(f)
  written = [plot(result, stem + "_curves.png")]
  saved = outputs.load_npz(stem + "_samples.npz", ("samples",))
  if saved is not None:
    outputs.save_image_grid(saved["samples"].astype(np.float32) / 255.0, stem + "_samples.png")
    written.append(stem + "_samples.png")
  for path in written:
    print(f"wrote {path}" if path else "matplotlib is not installed: no curves drawn")
  return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vpsde_mnist.py")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. training.mixed_precision=True (repeatable)")
  parser.add_argument("--train_minutes", type=float, default=5.0)
  parser.add_argument("--deadline_minutes", type=float, default=9.0,
                      help="wall-time budget of the whole run, start-up included")
  parser.add_argument("--max_steps", type=int, default=10_000_000)
  parser.add_argument("--log_every", type=int, default=100, help="training steps per loss point")
  parser.add_argument("--checkpoints", type=int, default=2,
                      help="intermediate bits/dim probes during training")
  parser.add_argument("--probe_examples", type=int, default=1000)
  parser.add_argument("--eval_batch_size", type=int, default=500)
  parser.add_argument("--max_test_examples", type=int, default=None,
                      help="evaluate at most this many test images at the end (default: all)")
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--classifier", default=None,
                      help="MNIST classifier parameters for the sample metrics")
  parser.add_argument("--out", default=os.path.join(_REPO, "experiments", "results"))
  parser.add_argument("--plot", default=None, metavar="JSON",
                      help="only draw the curves of an earlier result JSON, next to it")
  args = parser.parse_args(argv)
  if args.plot:
    return redraw(args.plot)
  deadline = Deadline(args.deadline_minutes)
  overrides = [parse_override(o) for o in args.override]
  config = apply_overrides(load_config(args.config), overrides)
  devices = Devices()
  now = datetime.datetime.now(datetime.timezone.utc)
  name = os.path.splitext(os.path.basename(args.config))[0]
  stem = os.path.join(args.out, f"mnist_result_{name}_"
                                f"{device_slug(devices.mesh.devices.flat[0].device_kind)}_"
                                f"{now.strftime('%Y-%m-%dT%H%MZ')}")
  result: Dict[str, Any] = dict(
      environment(devices), config=args.config, overrides=dict(overrides),
      precision="bf16" if config.training.mixed_precision else "fp32",
      batch_size=config.training.batch_size, n_jitted_steps=config.training.n_jitted_steps,
      train_minutes=args.train_minutes, deadline_minutes=args.deadline_minutes,
      eval={"params": "ema", "hutchinson_type": config.eval.hutchinson_type,
            "rtol": config.eval.rtol, "atol": config.eval.atol,
            "ode_solver": config.eval.ode_solver, "offset_bits": builders.bpd_offset_bits(config),
            "probe_examples": args.probe_examples, "batch_size": args.eval_batch_size},
      command=" ".join(["python -m experiments.mnist_result"] + argv),
      date=now.isoformat(timespec="seconds"))
  os.makedirs(args.out, exist_ok=True)

  def record() -> None:
    outputs.save_json(stem + ".json", result)

  probe_blocks = first_test_images(config, args.probe_examples, args.eval_batch_size, devices)
  sde, model, state = train_phase(
      config, devices, train_minutes=args.train_minutes, max_steps=args.max_steps,
      log_every=args.log_every, checkpoints=args.checkpoints, probe_blocks=probe_blocks,
      deadline=deadline, record=record, result=result)
  result["curves_png"] = plot(result, stem + "_curves.png") and os.path.basename(
      stem + "_curves.png")
  record()
  result["samples"] = sample_phase(config, devices, sde, model, state.ema_params,
                                   num_samples=args.num_samples, path=stem + "_samples.png",
                                   classifier=args.classifier)
  record()
  print(f"{args.num_samples} samples: {result['samples']['nfe']:.0f} NFE, "
        f"{result['samples']['run_s']:.1f} s", flush=True)
  bpd_fn = builders.build_bpd_fn(config, sde, model, devices)

  def on_batch(full: Dict[str, Any]) -> None:
    result["test_bpd"] = full
    record()

  split_examples = datasets.num_examples(config, "test")
  total = min(split_examples, args.max_test_examples or split_examples)
  blocks = first_test_images(config, total // args.eval_batch_size * args.eval_batch_size,
                             args.eval_batch_size, devices)
  full = full_bpd_phase(bpd_fn, state.ema_params, blocks, devices, seed=config.seed + 7,
                        split_examples=split_examples, deadline=deadline, on_batch=on_batch)
  result["wall_s"] = 60.0 * args.deadline_minutes - deadline.left()
  record()
  print(f"bits/dim {full['bpd']:.4f} +- {full['bpd_stderr']:.4f} on {full['examples']} of "
        f"{full['split_examples']} test images ({full['nfe']:.0f} NFE); wrote {stem}.json",
        flush=True)
  return result


if __name__ == "__main__":
  with one_line_errors():
    main()
