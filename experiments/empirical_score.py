"""Sample quality against NFE with no network: every sampler on the exact score of N real images.

``python -m experiments.empirical_score --config configs/vpsde_mnist.py --num_images 200
--num_samples 1000 --nfe 5,10,20,50`` (``--rgb32``: 32x32x3 images)

The data are the first ``--num_images`` training images of the config's data set, and the score
is the exact score of their empirical distribution under the config's SDE
(:func:`exact_scores.empirical_score`, the "optimal denoiser": no training, no network error).
Sampled exactly, every sample is one of those images, so a sampler's own error is what stands
between a sample and the nearest image. ``--rgb32`` pads the 28x28 images to 32x32 and stacks
three consecutive ones as the red, green and blue channels: real image content at CIFAR-10's
dimension (3,072) where CIFAR-10 itself cannot be downloaded.

The samplers are :func:`experiments.sampler_nfe.cases` without the final denoising (every fast
sampler at each NFE budget, each at its own default schedule, then the config's PC sampler over
``sde.N`` steps and the adaptive probability-flow ODE), and the paper's PC sampler (reverse
diffusion + Langevin, snr 0.16, ``2 sde.N`` evaluations). The final denoising step is left out
because it hides every difference: at ``eps`` the posterior over the images has collapsed, so
the posterior mean is one training image whatever path led there. What is scored instead is
``x(eps)`` itself: exact samples are ``a (x_n + sigma z)`` with ``sigma = sigma(eps)``, so the
RMS distance of ``x(eps) / a`` to the nearest image, in units of ``sigma``, is 1 (up to
``1 / sqrt(2 D)``; ``noise_exact``) and grows with a sampler's error. Per case: that ratio (mean
with its standard error, and median), the fraction of samples within ``--reach`` (default 1.5)
of an image (``reached``), and the fraction of the images that are some reached sample's
nearest (``coverage``; exact sampling gives ``1 - (1 - 1/N)^B`` in expectation,
``coverage_exact``), and for the deterministic samplers the fraction of samples that land on the
same image as the adaptive ODE from the same ``x(T)`` (``same_image_as_ode``): the exact flow
map sends each ``x(T)`` to one image, so this measures how well a solver follows it. Outputs
(``--out``): ``empirical_score_<config>[_rgb32]_<UTC time>`` ``.json``, ``.md`` (the table) and,
with matplotlib, ``.png`` (the excess distance, reached fraction and fraction on the ODE's image
against NFE).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
import exact_scores
from configs import apply_overrides, load_config, parse_override
from experiments.records import save_record
from experiments.sampler_nfe import cases
from infra.commands import one_line_errors


def training_images(config: ml_collections.ConfigDict, num_images: int,
                    rgb32: bool) -> np.ndarray:
  """The first ``num_images`` training images in [0, 1], ``[N, H, W, C]`` float32; with
  ``rgb32`` 28x28 grayscale images padded to 32x32, three consecutive ones per RGB image."""
  needed = num_images * (3 if rgb32 else 1)
  images = datasets.load_split(config, "train").images[:needed].astype(np.float32) / 255.0
  if len(images) < needed:
    raise ValueError(f"--num_images {num_images} needs {needed} training images; the split has "
                     f"{len(images)}.")
  if not rgb32:
    return images
  if images.shape[1:] != (28, 28, 1):
    raise ValueError(f"--rgb32 builds 32x32x3 images from 28x28 grayscale ones; "
                     f"{config.data.dataset} images are {images.shape[1:]}.")
  padded = np.pad(images[..., 0], ((0, 0), (2, 2), (2, 2)))
  return padded.reshape(num_images, 3, 32, 32).transpose(0, 2, 3, 1)


def nearest_distances(samples: np.ndarray, images: np.ndarray) -> np.ndarray:
  """``(rms: [B], index: [B])``: each sample's RMS distance to its nearest image and which."""
  s = samples.reshape(len(samples), -1).astype(np.float64)
  x = images.reshape(len(images), -1).astype(np.float64)
  sq = np.sum(s**2, 1)[:, None] - 2.0 * s @ x.T + np.sum(x**2, 1)[None]
  index = np.argmin(sq, axis=1)
  rms = np.sqrt(np.maximum(sq[np.arange(len(s)), index], 0.0) / s.shape[1])
  return rms, index


def scores(samples: np.ndarray, points: np.ndarray, a: float, sigma: float,
           reach: float) -> Tuple[Dict[str, float], np.ndarray]:
  """The metrics of one batch of ``x(eps)`` in model space (module docstring) and each sample's
  nearest image."""
  distance, index = nearest_distances(samples / a, points)
  noise = distance / sigma
  reached = noise <= reach
  return {"noise_mean": float(noise.mean()),
          "noise_se": float(noise.std(ddof=1) / np.sqrt(len(noise))),
          "noise_median": float(np.median(noise)),
          "reached": float(reached.mean()),
          "coverage": float(len(np.unique(index[reached])) / len(points)),
          "finite": bool(np.all(np.isfinite(samples)))}, index


def run(config: ml_collections.ConfigDict, *, num_images: int, num_samples: int,
        nfe_budgets: Sequence[int], rgb32: bool = False, reach: float = 1.5) -> Dict[str, Any]:
  """Samples ``num_samples`` (one batch) with every case on the empirical score; the record."""
  images = training_images(config, num_images, rgb32)
  scaler, _ = datasets.data_scalers(config)
  sde = builders.build_sde(config)
  points = np.asarray(scaler(images), np.float64).reshape(num_images, -1)
  score_fn = exact_scores.empirical_score(sde, points)
  eps = np.full((1,), config.sampling.eps)
  a, std = float(sde.mean_coeff(eps)[0]), float(sde.marginal_std(eps)[0])
  # Exact samples of x(eps) are a (x_n + sigma z): their noise is sigma RMS, up to 1 / sqrt(2 D).
  exact = np.sqrt(np.mean(np.random.default_rng(0).chisquare(points.shape[1], 100_000)
                          / points.shape[1]))
  shape = (num_samples,) + images.shape[1:]
  rng = jax.random.PRNGKey(config.seed + 7)
  # The paper's PC sampler (reverse diffusion + Langevin, snr 0.16: 2 N evaluations) besides the
  # config's own.
  paper_pc = ("pc_paper", dict(method="pc", predictor="reverse_diffusion", corrector="langevin",
                               snr=0.16, n_steps_each=1, noise_removal=False), None)
  rows, nearest = [], {}
  for name, overrides, num_steps in cases(nfe_budgets, denoise=False) + [paper_pc]:
    case_config = apply_overrides(config, [(f"sampling.{k}", v) for k, v in overrides.items()])
    sample = builders.build_sampling_fn(case_config, sde, shape, num_steps)
    # The fast samplers draw x(T) from the first half of their key, the ODE sampler from its
    # whole key: giving the ODE that half starts every deterministic sampler from the same x(T).
    key = jax.random.split(rng)[0] if overrides["method"] == "ode" else rng
    start = time.perf_counter()
    samples, nfe = jax.jit(lambda r, s=sample: s(r, score_fn))(key)
    samples = np.asarray(samples, np.float64).reshape(num_samples, -1)
    seconds = time.perf_counter() - start
    metrics, nearest[len(rows)] = scores(samples, points, a, std / a, reach)
    row = {"sampler": name, "num_steps": num_steps, "nfe": float(nfe), "seconds": seconds,
           "deterministic": overrides["method"] != "pc", **metrics}
    print(f"{name:>20} NFE {row['nfe']:6.0f}  noise / sigma(eps) {row['noise_mean']:9.3f} "
          f"+- {row['noise_se']:.3f}  reached {row['reached']:.3f}  coverage {row['coverage']:.3f}"
          f"  ({seconds:.1f} s)", flush=True)
    rows.append(row)
  # The exact flow map sends each x(T) to one image; the adaptive ODE is the reference for it.
  (ode,) = [i for i, row in enumerate(rows) if row["sampler"] == "ode"]
  for i, row in enumerate(rows):
    row["same_image_as_ode"] = (float(np.mean(nearest[i] == nearest[ode]))
                                if row["deterministic"] else None)
  coverage_exact = 1.0 - (1.0 - 1.0 / num_images) ** num_samples
  return {"config": config.to_dict(), "num_images": num_images, "num_samples": num_samples,
          "image_shape": list(images.shape[1:]), "rgb32": rgb32, "reach": reach,
          "noise_exact": float(exact), "sigma_eps": std / a, "coverage_exact": coverage_exact,
          "sde": type(sde).__name__, "device": jax.devices()[0].device_kind, "rows": rows}


def markdown(record: Dict[str, Any]) -> str:
  """The record's table: one row per case."""
  lines = ["| sampler | steps | NFE | distance / sigma(eps) (s.e.) | median | reached | "
           "coverage | same image as the ODE |", "|---|---|---|---|---|---|---|---|"]
  for r in record["rows"]:
    steps = "-" if r["num_steps"] is None else r["num_steps"]
    same = "-" if r["same_image_as_ode"] is None else f"{r['same_image_as_ode']:.3f}"
    lines.append(f"| {r['sampler']} | {steps} | {r['nfe']:.0f} | {r['noise_mean']:.3f} "
                 f"({r['noise_se']:.3f}) | {r['noise_median']:.3f} | {r['reached']:.3f} | "
                 f"{r['coverage']:.3f} | {same} |")
  shape = "x".join(str(d) for d in record["image_shape"])
  lines.append(f"\n{record['sde']}, {record['num_images']} training images ({shape}), "
               f"{record['num_samples']} samples, sigma(eps) = {record['sigma_eps']:.4g}; exact "
               f"sampling: distance {record['noise_exact']:.3f}, coverage "
               f"{record['coverage_exact']:.3f} (reached: within {record['reach']}); "
               f"{record['device']}.")
  return "\n".join(lines) + "\n"


def plot(record: Dict[str, Any], path: str) -> None:
  """Against NFE (log x), a line per fast sampler and the references as points, one colour per
  sampler: the excess distance to the nearest image (``distance / sigma(eps) - 1``, log y), the
  reached fraction and the fraction on the adaptive ODE's image."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
  names = list(dict.fromkeys(r["sampler"] for r in record["rows"]))
  colours = plt.get_cmap("tab20")(np.linspace(0.0, 1.0, len(names)))
  floor = 1e-4  # exact sampling's excess is 0 up to its noise (about 1 / sqrt(2 D B))
  for name, colour in zip(names, colours):
    rows = [r for r in record["rows"] if r["sampler"] == name]
    style = dict(marker="o" if len(rows) > 1 else "s", ls="-" if len(rows) > 1 else "",
                 color=colour, ms=4)
    nfe = [r["nfe"] for r in rows]
    axes[0].plot(nfe, [max(r["noise_mean"] - 1.0, floor) for r in rows], label=name, **style)
    axes[1].plot(nfe, [r["reached"] for r in rows], **style)
    if rows[0]["same_image_as_ode"] is not None:
      axes[2].plot(nfe, [r["same_image_as_ode"] for r in rows], **style)
  labels = ("excess distance to the nearest image\n(distance / sigma(eps) - 1)",
            f"fraction within {record['reach']} sigma(eps)\nof an image",
            "fraction on the adaptive\nODE's image (same x(T))")
  for ax, label in zip(axes, labels):
    ax.set_xscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_yscale("log")
  fig.legend(loc="center right", fontsize=8)
  shape = "x".join(str(d) for d in record["image_shape"])
  fig.suptitle(f"{record['sde']} on the exact score of {record['num_images']} images ({shape}), "
               f"{record['num_samples']} samples")
  fig.tight_layout(rect=(0.0, 0.0, 0.86, 1.0))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--override", action="append", default=[], help="key=value, repeatable")
  parser.add_argument("--num_images", type=int, default=200)
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--nfe", default="5,10,20,50")
  parser.add_argument("--rgb32", action="store_true",
                      help="32x32x3 images from three padded 28x28 ones")
  parser.add_argument("--reach", type=float, default=1.5,
                      help="distance to an image, in units of sigma(eps), that counts as reached")
  parser.add_argument("--out", default=os.path.join("experiments", "results"))
  args = parser.parse_args(argv)
  if args.num_images < 1 or args.num_samples < 2:
    raise ValueError("--num_images must be >= 1 and --num_samples >= 2.")
  config = apply_overrides(load_config(args.config), [parse_override(o) for o in args.override])
  record = run(config, num_images=args.num_images, num_samples=args.num_samples,
               nfe_budgets=[int(n) for n in args.nfe.split(",")], rgb32=args.rgb32,
               reach=args.reach)
  record["command"] = ["python", "-m", "experiments.empirical_score"] + list(
      sys.argv[1:] if argv is None else argv)
  name = os.path.splitext(os.path.basename(args.config))[0] + ("_rgb32" if args.rgb32 else "")
  return save_record(record, args.out, f"empirical_score_{name}", markdown, plot)


if __name__ == "__main__":
  with one_line_errors():
    main()
