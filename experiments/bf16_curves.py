"""Loss curves of the same training run in float32 and in bfloat16 mixed precision.

``python -m experiments.bf16_curves --config configs/toy/gaussian_mixture.py --steps 1000``
trains the config twice from the same seed -- identical initial parameters, data batches and
per-step noise (times ``t``, Gaussian ``z``, dropout) -- once with
``training.mixed_precision = False`` and once with ``True`` (bf16 activations and matmuls;
fp32 parameters, optimizer, EMA and loss), records both per-step training-loss curves, and
writes ``bf16_curves_<config>_<device>.json`` to ``--out``.

Because both runs draw the same noise, their difference isolates the numerical error of bf16.
It is judged against the float32 curve's own step-to-step noise: the standard deviation of the
fp32 loss within a sliding window of ``--window`` steps (the spread a single logged loss has
anyway), and the standard error of a ``--last``-step mean, ``std / sqrt(last)``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import datasets
from configs import apply_overrides, load_config, parse_override
from datasets import batching
from experiments.timed_training import TimedTraining
from infra.commands import one_line_errors
from infra.provenance import device_slug, environment

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _SyntheticImages(TimedTraining):
  """Training on uniform images of the config's shape instead of its data set (machines without
  the data files); global batch ``k`` is drawn from ``config.seed`` and ``k``."""

  def load_data(self) -> Tuple[batching.Batches, batching.Batches]:
    config = self.config
    shape = datasets.input_shape(config)[1:]

    def sample(n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
      return rng.random((n,) + shape, dtype=np.float32), np.full((n,), -1, np.int32)

    stream = batching.make_sampled_batches(
        sample, batch_size=config.training.batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), seed=config.seed)
    return stream, stream


def loss_curve(config: ml_collections.ConfigDict, steps: int, *, chunk: int = 50,
               data: str = "config") -> Tuple[np.ndarray, Dict[str, Any]]:
  """Trains ``steps`` steps of the training loop (:class:`TimedTraining`, ``chunk`` steps per
  compiled call) on the config's data (``data='config'``) or uniform images
  (``'synthetic'``); returns the per-step losses ``[steps]`` and run facts (checksums of the
  data stream and initial parameters, the network's dtype)."""
  if steps % chunk:
    raise ValueError(f"steps ({steps}) must be a multiple of chunk ({chunk}).")
  config = ml_collections.ConfigDict(config.to_dict())
  config.training.n_jitted_steps = chunk
  trainer = (_SyntheticImages if data == "synthetic" else TimedTraining)(config)
  first_params = jax.tree_util.tree_leaves(jax.device_get(trainer.state.params))
  stream = trainer.batches(0)  # the same stream the trainer reads, for its checksum
  data_checksum = sum(float(np.sum(trainer.scaler(next(stream)["image"]), dtype=np.float64))
                      for _ in range(steps))
  trainer.run_until(steps)
  facts = {"data_checksum": data_checksum,
           "params_checksum": float(sum(np.sum(p, dtype=np.float64) for p in first_params)),
           "model_dtype": str(jnp.dtype(getattr(trainer.model, "dtype", jnp.float32)))}
  return trainer.losses, facts


def window_std(curve: np.ndarray, window: int) -> float:
  """Mean over sliding windows of the sample std (ddof = 1) of ``window`` consecutive values."""
  if window < 2 or len(curve) < window:
    raise ValueError(f"Need 2 <= window <= len(curve), got window={window}, len={len(curve)}.")
  windows = np.lib.stride_tricks.sliding_window_view(curve, window)
  return float(np.mean(np.std(windows, axis=-1, ddof=1)))


def compare_curves(fp32: np.ndarray, bf16: np.ndarray, *, window: int = 20,
                   last: int = 100) -> Dict[str, float]:
  """bf16-vs-fp32 differences in units of the fp32 curve's noise.

  Returns ``mean_abs_diff`` (over all steps), ``fp32_window_std`` (:func:`window_std`),
  their ratio, the two means over the ``last`` steps, and ``last_mean_stderr``: the standard
  error of the fp32 ``last``-step mean, ``std(fp32[-last:]) / sqrt(last)``, treating steps
  as independent draws (each step samples fresh ``t`` and noise).
  """
  if fp32.shape != bf16.shape:
    raise ValueError(f"Curves differ in length: {fp32.shape} vs {bf16.shape}.")
  last = min(last, len(fp32))
  mean_abs_diff = float(np.mean(np.abs(bf16 - fp32)))
  noise = window_std(fp32, min(window, len(fp32)))
  tail32, tail16 = fp32[-last:], bf16[-last:]
  stderr = float(np.std(tail32, ddof=1) / np.sqrt(last))
  return {"mean_abs_diff": mean_abs_diff, "fp32_window_std": noise,
          "diff_over_noise": mean_abs_diff / noise if noise > 0 else float("inf"),
          "last_steps": last, "fp32_last_mean": float(np.mean(tail32)),
          "bf16_last_mean": float(np.mean(tail16)),
          "last_mean_diff": float(np.mean(tail16) - np.mean(tail32)),
          "last_mean_stderr": stderr,
          "last_mean_diff_over_stderr": float(abs(np.mean(tail16) - np.mean(tail32)) / stderr)
                                        if stderr > 0 else float("inf")}


def run(config: ml_collections.ConfigDict, steps: int, *, chunk: int = 50, data: str = "config",
        window: int = 20, last: int = 100) -> Dict[str, Any]:
  """Both curves (fp32 first) and :func:`compare_curves` of them."""
  curves, facts = {}, {}
  for name, mixed in (("fp32", False), ("bf16", True)):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.training.mixed_precision = mixed
    curves[name], facts[name] = loss_curve(cfg, steps, chunk=chunk, data=data)
  for key in ("data_checksum", "params_checksum"):
    if facts["fp32"][key] != facts["bf16"][key]:
      raise RuntimeError(f"The fp32 and bf16 runs did not start alike ({key} differs).")
  return {"steps": steps, "chunk": chunk, "data": data, "window": window, "facts": facts,
          "stats": compare_curves(curves["fp32"], curves["bf16"], window=window, last=last),
          "fp32": curves["fp32"].tolist(), "bf16": curves["bf16"].tolist()}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/toy/gaussian_mixture.py")
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--chunk", type=int, default=50, help="steps per compiled call")
  parser.add_argument("--window", type=int, default=20)
  parser.add_argument("--last", type=int, default=100)
  parser.add_argument("--data", choices=("config", "synthetic"), default="config")
  parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                      help="config override, e.g. training.batch_size=64 (repeatable)")
  parser.add_argument("--out", default=os.path.join(_REPO, "experiments", "results"))
  args = parser.parse_args(argv)
  overrides = [parse_override(o) for o in args.override]
  config = apply_overrides(load_config(args.config), overrides)
  result = dict(environment(), config=args.config, overrides=dict(overrides),
                command=" ".join(["python -m experiments.bf16_curves"] + argv),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **run(config, args.steps, chunk=args.chunk, data=args.data, window=args.window,
                      last=args.last))
  stats = result["stats"]
  print(f"mean |bf16 - fp32| = {stats['mean_abs_diff']:.3g} "
        f"({stats['diff_over_noise']:.3g} x fp32 window std {stats['fp32_window_std']:.3g}); "
        f"last {stats['last_steps']} means: fp32 {stats['fp32_last_mean']:.4f}, "
        f"bf16 {stats['bf16_last_mean']:.4f} (diff = {stats['last_mean_diff_over_stderr']:.2f} "
        f"standard errors)")
  name = os.path.splitext(os.path.basename(args.config))[0]
  path = os.path.join(args.out, f"bf16_curves_{name}_"
                                f"{device_slug(result['device']['device_kind'])}.json")
  os.makedirs(args.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  with one_line_errors():
    main()
