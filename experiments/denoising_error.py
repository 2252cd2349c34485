"""Where a trained score is poor: its denoising error per noise level on test images.

``python -m experiments.denoising_error --config configs/tutorial_mnist.py --workdir <workdir>
--num_images 256 --times 1e-5,1e-4,1e-3,1e-2,1e-1,0.5``

For each ``t``, test images ``x0`` (the first ``--num_images`` of the test split, in model
space) are perturbed, ``x = a(t) x0 + std(t) z``, and the network's noise estimate
``-std(t) s(x, t)`` is compared with ``z``: the error ``E |std s(x, t) + z|^2 / D``. Predicting
no structure (``s = 0``) scores 1; the exact score scores the posterior variance of ``z`` per
dimension, which is below 1 and goes to 0 where the data are resolved. Beside it, the same error
of the grey-level rounding denoiser (``x0`` estimated by rounding ``x / a(t)`` to the data's 256
levels in [0, 1]), which any model of 8-bit images should beat at the noise levels that resolve
single grey levels; and the probability that training's uniform ``t`` on ``[eps, T]`` falls
below ``t``. The probability-flow likelihood integrates the model from ``eps`` up, so a score
that is poor at the smallest noise levels costs bits/dim that no sample metric shows. Outputs
(``--out``): ``denoising_error_<config>_<UTC time>`` ``.json``, ``.md`` and, with matplotlib,
``.png``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import builders
import datasets
import sde_lib
from configs import apply_overrides, load_config, parse_override
from experiments.records import save_record
from infra.commands import one_line_errors
from infra.devices import Devices
from models.utils import get_score_fn
from modes import parameters

Array = jax.Array
Scaler = Callable[[Any], Any]


def denoising_errors(score_fn: sde_lib.ScoreFn, sde: sde_lib.SDE, x0: Array,
                     times: Sequence[float], key: Array, scaler: Scaler,
                     inverse_scaler: Scaler, repeats: int = 4) -> Dict[str, list]:
  """Per ``t``: the score's and the rounding denoiser's error (module docstring), each the mean
  over ``repeats`` noise draws of ``x0: [N, ...]`` (model space), and the noise's size in grey
  levels of the [0, 1] data (``std / a`` over the scaler's slope)."""
  slope = float(scaler(jnp.ones(())) - scaler(jnp.zeros(())))
  score_fn = jax.jit(score_fn)
  out: Dict[str, list] = {"t": [], "std_grey_levels": [], "score": [], "rounding": []}
  for t in times:
    tt = jnp.full((x0.shape[0],), t, jnp.float32)
    a, std = float(sde.mean_coeff(tt)[0]), float(sde.marginal_std(tt)[0])
    errors, rounded = [], []
    for k in jax.random.split(jax.random.fold_in(key, len(out["t"])), repeats):
      z = jax.random.normal(k, x0.shape)
      x = a * x0 + std * z
      errors.append(float(jnp.mean((std * score_fn(x, tt) + z) ** 2)))
      x0_hat = scaler(jnp.clip(jnp.round(inverse_scaler(x / a) * 255.0), 0, 255) / 255.0)
      rounded.append(float(jnp.mean(((x - a * x0_hat) / std - z) ** 2)))
    out["t"].append(float(t))
    out["std_grey_levels"].append(std / (a * slope) * 255.0)
    out["score"].append(float(np.mean(errors)))
    out["rounding"].append(float(np.mean(rounded)))
  return out


def _markdown(record: Dict[str, Any]) -> str:
  rows = record["rows"]
  lines = [f"Denoising error per noise level: {record['config']}, step {record['step']}, "
           f"{record['num_images']} test images x {record['repeats']} noise draws "
           f"({record['date']}, {record['device']})", "",
           "| t | std / a (grey levels) | network | rounding | P(training t < t) |",
           "|---|---|---|---|---|"]
  for i, t in enumerate(rows["t"]):
    lines.append(f"| {t:.0e} | {rows['std_grey_levels'][i]:.2f} | {rows['score'][i]:.4f} | "
                 f"{rows['rounding'][i]:.4f} | {record['p_train_below'][i]:.1e} |")
  return "\n".join(lines) + "\n"


def _plot(record: Dict[str, Any], path: str) -> None:
  import matplotlib.pyplot as plt
  rows = record["rows"]
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  ax.semilogx(rows["std_grey_levels"], rows["score"], "o-", label=f"network, step {record['step']}")
  ax.semilogx(rows["std_grey_levels"], rows["rounding"], "s--", label="rounding to grey levels")
  ax.axhline(1.0, color="gray", lw=0.8, label="s = 0 (no structure)")
  ax.set_xlabel("std(t) / a(t) in grey levels")
  ax.set_ylabel("E|std s + z|^2 / D")
  ax.set_title(record["config"], fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True, help="the training run's workdir")
  parser.add_argument("--checkpoint", default=None, help="a step (default: the newest)")
  parser.add_argument("--override", action="append", default=[], type=parse_override)
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=4)
  parser.add_argument("--times", default="1e-5,3e-5,1e-4,3e-4,1e-3,1e-2,1e-1,0.5")
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  config = apply_overrides(load_config(args.config), args.override)
  times = [float(t) for t in args.times.split(",")]
  sde = builders.build_sde(config)
  eps = config.training.eps
  if args.num_images < 1 or not all(eps <= t <= sde.T for t in times):
    raise ValueError(f"--num_images must be >= 1 and --times within [training.eps, T] = "
                     f"[{eps:g}, {sde.T:g}]; got {args.num_images} and {args.times}.")
  parameters.check_available(config, args.workdir, args.checkpoint, False)
  images = datasets.load_split(config, "test").images[:args.num_images]
  devices = Devices()
  model, _, template = builders.init_state(config, devices)
  chosen = parameters.sampling_parameters(config, args.workdir, args.checkpoint, False, model,
                                          template)
  scaler, inverse_scaler = datasets.data_scalers(config)
  x0 = scaler(jnp.asarray(images, jnp.float32) / 255.0)
  rows = denoising_errors(get_score_fn(sde, model, chosen.params), sde, x0, times,
                          jax.random.PRNGKey(config.seed), scaler, inverse_scaler, args.repeats)
  record = {"config": os.path.basename(args.config), "step": chosen.step,
            "num_images": len(images), "repeats": args.repeats, "rows": rows,
            "p_train_below": [(t - eps) / (sde.T - eps) for t in times],
            "device": jax.devices()[0].device_kind, "date": str(np.datetime64("today"))}
  name = f"denoising_error_{os.path.splitext(record['config'])[0]}"
  return save_record(record, args.out, name, _markdown, _plot)


if __name__ == "__main__":
  with one_line_errors():
    main()
