"""Time to a test bits/dim: trains a config and tracks bits/dim of a fixed test subset.

``python -m experiments.time_to_bpd --config configs/vpsde_mnist.py
--override data.data_dir=../shared/data/mnist --targets 2.0,1.5,1.3 --eval_every 1000
--eval_examples 500 --max_minutes 9``

Trains exactly as ``main.py --mode train`` does (its training loop, in timed intervals:
:class:`experiments.timed_training.TimedTraining`) and every ``--eval_every`` steps
measures bits/dim of the EMA parameters (the network ``--mode eval`` scores) on the first
``--eval_examples`` images of the test split, with the evaluation's own likelihood settings
(``config.eval``: Hutchinson type, rtol/atol; uniform dequantization and its offset, as
:func:`builders.build_bpd_fn`). The images, dequantization noise and Hutchinson probes are the
same at every evaluation, so the curve shows the network improving, not noise being redrawn.

The training clock stops while bits/dim are measured: ``train_s`` is the wall time of training
alone (data pipeline, host-device copies and the first call's compilation included; the
first call is also reported on its own, ``first_call_s``). For each of ``--targets`` the record
keeps the first evaluation at or below it. Stops when every target is reached, at
``--max_steps``, or once ``--max_minutes`` of wall time (training and evaluation) have passed.
The JSON is rewritten after every evaluation, so a run killed by a time limit keeps its curve.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
from configs import apply_overrides, load_config, parse_override
from experiments.timed_training import TimedTraining
from infra.commands import one_line_errors
from infra.devices import Devices, gather
from infra.provenance import device_slug, environment

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_test_images(config: ml_collections.ConfigDict, n: int, batch_size: int,
                      devices: Devices) -> List[np.ndarray]:
  """The first ``n`` test images in stored order, ``[batch_size, H, W, C]`` in [0, 1] blocks.

  ``n`` must be a multiple of ``batch_size``, itself a multiple of the device count: every block
  is full, so every evaluation sees exactly these ``n`` images.
  """
  if n < 1 or n % batch_size:
    raise ValueError(f"--eval_examples ({n}) must be a positive multiple of --eval_batch_size "
                     f"({batch_size}).")
  devices.check_batch(batch_size, "--eval_batch_size")
  blocks = []
  for batch in datasets.get_dataset(config, split="test", batch_size=batch_size, train=False,
                                    prefetch=0):
    if len(blocks) * batch_size >= n:
      break
    if batch["mask"].min() < 1:
      raise ValueError(f"The test split has fewer than --eval_examples = {n} images.")
    blocks.append(np.asarray(batch["image"], np.float32))
  return blocks


def bpd_blocks(bpd_fn, params, blocks: Sequence[np.ndarray], devices: Devices,
               seed: int) -> Iterator[Tuple[np.ndarray, float, float]]:
  """Per block: ``(bits/dim [block_size], NFE, seconds)``; the same noise for a given ``seed``
  (block ``k`` uses ``fold_in(PRNGKey(seed), k)``).

  Raises:
    FloatingPointError: as soon as a block's bits/dim are not finite.
  """
  for k, block in enumerate(blocks):
    start = time.perf_counter()
    bpd, nfe = bpd_fn(jax.random.fold_in(jax.random.PRNGKey(seed), k), params,
                      devices.put_batch(block))
    values = gather(bpd)
    if not np.all(np.isfinite(values)):
      raise FloatingPointError(f"Bits/dim of test block {k} are not finite.")
    yield values, float(nfe), time.perf_counter() - start


def measure_bpd(bpd_fn, params, blocks: Sequence[np.ndarray], devices: Devices,
                seed: int) -> Dict[str, float]:
  """Mean bits/dim, its standard error, the number of images and the mean NFE over ``blocks``
  (the noise as :func:`bpd_blocks`)."""
  start = time.perf_counter()
  values, nfes = [], []
  for block_values, nfe, _ in bpd_blocks(bpd_fn, params, blocks, devices, seed):
    values.append(block_values)
    nfes.append(nfe)
  values = np.concatenate(values)
  return {"bpd": float(values.mean()),
          "bpd_stderr": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1
                        else float("nan"),
          "examples": int(values.size), "nfe": float(np.mean(nfes)),
          "eval_s": time.perf_counter() - start}


def targets_reached(curve: Sequence[Dict[str, Any]], targets: Sequence[float]) -> List[Dict]:
  """For each target, the first curve point with ``bpd <= target`` (``reached: False`` if none)."""
  out = []
  for target in targets:
    hit = next((p for p in curve if p["bpd"] <= target), None)
    out.append({"target_bpd": target, "reached": hit is not None}
               | ({"step": hit["step"], "train_s": hit["train_s"], "images": hit["images"],
                   "bpd": hit["bpd"]} if hit else {}))
  return out


def run(config: ml_collections.ConfigDict, *, targets: Sequence[float], eval_every: int,
        eval_examples: int, eval_batch_size: int, max_steps: int, max_minutes: float,
        on_point=None) -> Dict[str, Any]:
  """Trains and evaluates; returns ``{curve, targets, first_call_s, images_per_s, ...}``.

  ``on_point(result)`` is called after every evaluation with the result so far.
  """
  if eval_every < 1:
    raise ValueError(f"--eval_every must be >= 1, got {eval_every}.")
  wall_start = time.perf_counter()
  devices = Devices()
  trainer = TimedTraining(config, devices)
  blocks = first_test_images(config, eval_examples, eval_batch_size, devices)
  bpd_fn = builders.build_bpd_fn(config, trainer.sde, trainer.model, devices)
  result: Dict[str, Any] = {"curve": [], "targets": targets_reached([], targets),
                            "num_params": trainer.num_params}
  while trainer.step < max_steps:
    step = trainer.step
    loss = trainer.run_until(min(step + eval_every - step % eval_every, max_steps))
    step, train_s, state = trainer.step, trainer.train_s, trainer.state
    result["first_call_s"] = trainer.first_call_s
    point = {"step": step, "images": step * config.training.batch_size, "train_s": train_s,
             "train_loss": loss}
    point.update(measure_bpd(bpd_fn, state.ema_params, blocks, devices, seed=config.seed + 3))
    result["curve"].append(point)
    result["targets"] = targets_reached(result["curve"], targets)
    result["images_per_s"] = trainer.images_per_s
    result["wall_s"] = time.perf_counter() - wall_start
    print(f"step {step}: train {train_s:.1f} s, loss {loss:.4g}, bits/dim {point['bpd']:.4f} "
          f"+- {point['bpd_stderr']:.4f} ({point['nfe']:.0f} NFE, {point['eval_s']:.1f} s)",
          flush=True)
    if on_point is not None:
      on_point(result)
    if all(t["reached"] for t in result["targets"]) or result["wall_s"] >= 60.0 * max_minutes:
      break
  return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/vpsde_mnist.py")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. training.mixed_precision=True (repeatable)")
  parser.add_argument("--targets", default="2.0,1.5,1.3",
                      help="comma-separated bits/dim thresholds")
  parser.add_argument("--eval_every", type=int, default=1000, help="training steps")
  parser.add_argument("--eval_examples", type=int, default=500)
  parser.add_argument("--eval_batch_size", type=int, default=500)
  parser.add_argument("--max_steps", type=int, default=1_000_000)
  parser.add_argument("--max_minutes", type=float, default=9.0,
                      help="wall-time budget, training and evaluation together")
  parser.add_argument("--out", default=os.path.join(_REPO, "experiments", "results"))
  args = parser.parse_args(argv)
  overrides = [parse_override(o) for o in args.override]
  config = apply_overrides(load_config(args.config), overrides)
  targets = sorted((float(t) for t in args.targets.split(",") if t.strip()), reverse=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  header = dict(environment(), config=args.config, overrides=dict(overrides),
                precision="bf16" if config.training.mixed_precision else "fp32",
                batch_size=config.training.batch_size,
                n_jitted_steps=config.training.n_jitted_steps,
                eval={"examples": args.eval_examples, "batch_size": args.eval_batch_size,
                      "every_steps": args.eval_every, "params": "ema",
                      "hutchinson_type": config.eval.hutchinson_type, "rtol": config.eval.rtol,
                      "atol": config.eval.atol, "ode_solver": config.eval.ode_solver,
                      "offset_bits": builders.bpd_offset_bits(config)},
                command=" ".join(["python -m experiments.time_to_bpd"] + argv),
                date=now.isoformat(timespec="seconds"))
  name = os.path.splitext(os.path.basename(args.config))[0]
  path = os.path.join(args.out, f"time_to_bpd_{name}_{header['precision']}_"
                                f"{device_slug(header['device']['device_kind'])}_"
                                f"{now.strftime('%Y-%m-%dT%H%MZ')}.json")
  os.makedirs(args.out, exist_ok=True)

  def write(result):
    with open(path, "w") as f:
      json.dump(dict(header, **result), f, indent=1)

  result = run(config, targets=targets, eval_every=args.eval_every,
               eval_examples=args.eval_examples, eval_batch_size=args.eval_batch_size,
               max_steps=args.max_steps, max_minutes=args.max_minutes, on_point=write)
  write(result)
  for t in result["targets"]:
    print(f"bits/dim <= {t['target_bpd']}: " + (
        f"step {t['step']}, {t['train_s']:.1f} s of training" if t["reached"] else "not reached"))
  print(f"wrote {path}")
  return dict(header, **result)


if __name__ == "__main__":
  with one_line_errors():
    main()
