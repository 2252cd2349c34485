"""``python -m noise_schedule --config CONFIG [--config.a.b=v ...] [--max_examples N]``: the
noise schedule the training data suggest, as ready-to-paste overrides with their reasons (the
techniques are :mod:`noise_schedule`'s)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

import configs
import datasets
from noise_schedule import Schedule, max_pairwise_distance, schedule

# Errors a user can fix from the command line: reported in one line, non-zero exit.
_USER_ERRORS = (ValueError, OSError, KeyError, TypeError)


def _parse(argv: Sequence[str]):
  """``(config, max_examples)`` from the command line; ValueError in one line for bad input."""
  def fail(message):
    raise ValueError(message)

  parser = argparse.ArgumentParser(prog="python -m noise_schedule", allow_abbrev=False,
                                   description=__doc__.splitlines()[0])
  parser.error = fail
  parser.add_argument("--config", required=True, help="config file, e.g. configs/image_folder.py")
  parser.add_argument("--max_examples", type=int, default=10000,
                      help="distances over at most this many training examples (0: all)")
  args, rest = parser.parse_known_args(argv)
  stray = [a for a in rest if not a.startswith("--config.")]
  if stray:
    raise ValueError(f"unexpected arguments {' '.join(stray)!r}; pass --config, "
                     f"--config.a.b=value and --max_examples only.")
  if args.max_examples < 0:
    raise ValueError(f"--max_examples must be >= 0 (0: all), got {args.max_examples}.")
  try:
    config = configs.load_config(args.config)
  except Exception as e:  # pylint: disable=broad-except -- any failure to load is the user's
    raise ValueError(f"cannot load config {args.config!r}: {type(e).__name__}: "
                     f"{str(e).rstrip('.')}. Pass a config file that defines get_config().") from e
  overrides = [configs.parse_override(a[len("--config."):]) for a in rest]
  return configs.apply_overrides(config, overrides), args.max_examples


def main(argv: Optional[Sequence[str]] = None) -> Schedule:
  """Reads the training split named by the config, prints the suggestions and returns them.

  The distances are those of the model's inputs: the data scaler is affine, so they are its
  slope (1, or 2 for ``data.centered``) times the distances of the pixels ``v / 255``. With more
  than ``--max_examples`` training examples, a fixed random subset of that many (seed 0) is used;
  a subset can only lower the largest distance.
  """
  config, max_examples = _parse(sys.argv[1:] if argv is None else list(argv))
  if config.data.get("dim", 0):
    raise ValueError(f"noise_schedule reads image data; config.data.dim = {config.data.dim} "
                     f"selects 2-D toy points, for which Technique 2 does not apply (D < 5).")
  images = datasets.load_split(config, "train").images
  total = images.shape[0]
  if 0 < max_examples < total:
    images = images[np.sort(np.random.default_rng(0).choice(total, max_examples, replace=False))]
  scaler = datasets.get_data_scaler(config.data.centered)
  slope = float(scaler(1.0) - scaler(0.0))
  pixels = images.reshape(images.shape[0], -1)
  distance = slope / 255.0 * max_pairwise_distance(pixels)
  result = schedule(distance, pixels.shape[1], sigma_min=float(config.model.sigma_min),
                    beta_min=float(config.model.beta_min),
                    n_steps=int(config.sampling.n_steps_each))
  print(_report(config, result, images.shape, total))
  return result


def _report(config, s: Schedule, shape: Sequence[int], total: int) -> str:
  """The suggestions as ready-to-paste overrides, one line of reason each."""
  n, h, w, c = shape
  space = "[-1, 1]" if config.data.centered else "[0, 1]"
  subset = "" if n == total else " (a fixed random subset; --max_examples=0 uses all)"
  no_grid = ("not derived for {}: its time grid does not give geometric levels (see "
             "noise_schedule's docstring); keep the config's.")
  lines = [
      f"Data: train split of {config.data.dataset!r} ({config.data.source}), {n} of {total} "
      f"examples{subset}, D = {h} x {w} x {c} = {s.dim}, model space {space} "
      f"(data.centered = {bool(config.data.centered)}: train with the same).",
      f"Largest distance between two examples: {s.max_distance:.5g}.",
      "",
      "VE SDE (--config.training.sde=vesde):",
      f"  --config.model.sigma_max={s.sigma_max:.5g} --config.model.num_scales={s.num_scales} "
      f"--config.sampling.snr={s.snr:.3g}",
      "  model.sigma_max: Technique 1, the largest distance between two training examples.",
      f"  model.num_scales: Technique 2, geometric levels from model.sigma_min = {s.sigma_min:g} "
      f"with ratio {s.gamma:.5g}, at which adjacent levels still overlap by at least 1/2 in "
      f"D = {s.dim}.",
      f"  sampling.snr: Technique 4, Langevin step epsilon = {s.epsilon:.3g} with {s.n_steps} "
      f"step(s) per level (sampling.n_steps_each) leaves the variance ratio at "
      f"{s.variance_ratio:.4f} (1 is ideal); snr = sqrt(epsilon / 2) / sigma_min.",
  ]
  for name, sde, beta_max, std in (("VP", "vpsde", s.vp_beta_max, "sqrt(1 - alpha_bar(1))"),
                                   ("sub-VP", "subvpsde", s.subvp_beta_max, "1 - alpha_bar(1)")):
    lines += [
        f"{name} SDE (--config.training.sde={sde}):",
        f"  --config.model.beta_max={beta_max:.4g}",
        f"  model.beta_max: with model.beta_min = {s.beta_min:g}, at t = 1 the largest distance "
        f"shrinks to sqrt(alpha_bar(1)) * {s.max_distance:.4g} = the marginal std {std} "
        f"(Technique 1's criterion).",
        f"  model.num_scales, sampling.snr: {no_grid.format(name)}",
    ]
  return "\n".join(lines)


def run() -> None:
  """The command: :func:`main`, with a user's error reported in one line and a non-zero exit."""
  try:
    main()
  except _USER_ERRORS as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    sys.exit(f"error: {' '.join(str(message).split())}")


if __name__ == "__main__":
  run()
