"""``--mode sample``: samples of one checkpoint with the sampler ``config.sampling`` names
(:func:`sample`); with ``--inpaint``, ``--colorize`` or ``--class_label`` controlled generation
instead (:mod:`modes.controlled_sample`).

Writes ``<workdir>/<folder>/<step_<step> | released_step_<step> | exact>_<sampler>/``:
``sample.{png,npz}`` (toys: the PNG shows the data beside the samples; ``samples_vs_data.png``
overlays them), ``sample.json`` (NFE, timing, settings) and ``process.gif``, the reverse process
of the first batch. Never writes into the checkpoint directories, so it can run while training
goes on.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
import figures
from datasets import toy_data
from evaluation import eval_cache
from infra import logs
from infra import outputs
from infra import run_config
from infra.devices import Devices, gather
from modes import Options
from modes import parameters

Config = ml_collections.ConfigDict


class Drawn(NamedTuple):
  """What :func:`draw_in_batches` drew: ``samples`` in data space (the first ``num_samples``),
  the mean NFE per batch, and the wall time of all batches and of the first (compiling
  included)."""
  samples: np.ndarray
  nfe: float
  num_batches: int
  seconds: float
  first_batch_seconds: float


def draw_in_batches(what: str, num_samples: int, batch_size: int,
                    draw: Callable[[int], Tuple[jax.Array, jax.Array]],
                    inverse_scaler: Callable[[Any], Any]) -> Drawn:
  """``num_samples`` results of ``draw(k) -> (x: [batch_size, ...] in model space, nfe)`` called
  for batches ``k = 0, 1, ...``, gathered from every process and mapped to data space, with
  progress reported as ``what``."""
  num_batches = -(-num_samples // batch_size)
  progress = logs.PieceProgress(what, num_batches)
  results, nfes, first_batch_seconds = [], [], 0.0
  start = time.monotonic()
  for k in range(num_batches):
    x, nfe = draw(k)
    results.append(np.asarray(inverse_scaler(gather(x))))
    nfes.append(float(nfe))
    if k == 0:
      first_batch_seconds = time.monotonic() - start
    progress.update(f"{nfes[-1]:.0f} NFE")
  progress.close()
  return Drawn(np.concatenate(results)[:num_samples], float(np.mean(nfes)), num_batches,
               time.monotonic() - start, first_batch_seconds)


def data_reference(config: Config, n: int) -> Optional[np.ndarray]:
  """Toys: ``n`` fresh data points to draw beside samples; None for images."""
  if not datasets.is_vector_data(config):
    return None
  return toy_data.sample_toy(config.data.dataset, n, seed=config.seed + 5)


def sample(config: Config, workdir: str, *, checkpoint: Optional[str] = None,
           num_samples: int = 64, folder: str = "sampled", num_frames: int = 40,
           allow_config_change: bool = False) -> Dict[str, Any]:
  """Draws ``num_samples`` samples (EMA parameters) with the sampler ``config.sampling`` names.

  Writes the folder of the module docstring; ``process.gif`` shows up to 64 images of the first
  batch in ``num_frames`` frames. Different samples: another ``config.seed``.

  The exact score (``model.name = 'exact_score'``) has no parameters and reads no checkpoint:
  it samples into ``<workdir>/<folder>/exact_<sampler>/`` (``sample.json`` records ``"step":
  null, "checkpoint": null``), and no ``config.json`` is consulted, since nothing was trained.

  Args:
    checkpoint: None for the newest checkpoint of ``workdir`` (snapshot or preemption), a step
      number, the path of a step directory (``<other workdir>/checkpoints/<step>``), or one of
      the authors' released files (:mod:`modes.parameters`); must be None for the exact score.
    num_samples: how many; drawn in batches of at most ``eval.batch_size``.
    num_frames: frames of ``process.gif`` (the sampler keeps ``num_frames x batch`` states);
      0: no animation.

  Returns:
    ``{"step", "num_samples", "nfe", "seconds", "first_batch_seconds", "path"}``.

  Raises:
    FileNotFoundError: no such checkpoint. ValueError: a bad count or sampler, a checkpoint
    given for the exact score, or a config that differs from the one the checkpoint was trained
    with.
  """
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  parameters.check_available(config, workdir, checkpoint, allow_config_change)
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  batch_size = devices.round_batch(min(config.eval.batch_size, num_samples))
  sampler = builders.build_sampler(config, sde, model, devices, batch_size)
  animated = (builders.build_sampler(config, sde, model, devices, batch_size,
                                     num_frames=num_frames) if num_frames else None)
  chosen = parameters.sampling_parameters(config, workdir, checkpoint, allow_config_change,
                                          model, template)
  tag = builders.sampler_tag(config)
  out_dir = os.path.join(workdir, folder, f"{chosen.folder}_{tag}")
  outputs.check_writable(out_dir)
  logging.info("Sampling %d from %s with %s, batch %d.", num_samples, chosen.name, tag,
               batch_size)
  _, inverse_scaler = datasets.data_scalers(config)
  base = jax.random.PRNGKey(config.seed)
  trajectory = None

  def draw(k: int) -> Tuple[jax.Array, jax.Array]:
    nonlocal trajectory
    if k == 0 and animated is not None:
      # The same draw as the plain sampler's (same key); only the frames are kept besides.
      samples, nfe, trajectory = animated(jax.random.fold_in(base, k), chosen.params)
      return samples, nfe
    return sampler(jax.random.fold_in(base, k), chosen.params)

  drawn = draw_in_batches("sampling", num_samples, batch_size, draw, inverse_scaler)
  samples, seconds, first_batch_seconds = drawn.samples, drawn.seconds, drawn.first_batch_seconds
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError(f"Sampling {chosen.name} with {tag} gave non-finite values (the "
                             "network diverged, or the ODE solver hit its step cap); nothing was "
                             "saved.")
  reference = data_reference(config, max(num_samples, 2000))
  result = {"step": chosen.step, "num_samples": int(num_samples), "nfe": drawn.nfe,
            "seconds": seconds, "first_batch_seconds": first_batch_seconds, "path": out_dir}
  if jax.process_index() == 0:
    outputs.save_samples(samples, out_dir, reference=reference, nfe=drawn.nfe,
                         step=-1 if chosen.step is None else chosen.step)
    outputs.save_json(os.path.join(out_dir, "sample.json"),
                      {**result, "checkpoint": None if chosen.step is None else chosen.name,
                       "settings": eval_cache.canonical(run_config.section(config, "sampling"))})
    title = figures.run_title(chosen.title, tag, result["nfe"])
    if not figures.available():
      logging.warning("matplotlib is not installed: no process.gif or samples_vs_data.png "
                      "(pip install matplotlib).")
    elif reference is not None:
      figures.toy_samples_vs_data(samples, reference, os.path.join(out_dir, "samples_vs_data.png"),
                                  title=title)
    if trajectory is not None and figures.available():
      frames = np.asarray(inverse_scaler(gather(trajectory.x)))
      frames = frames if reference is not None else frames[:, :64]  # points: all; images: 64
      figures.process_animation(frames, np.asarray(trajectory.t),
                                os.path.join(out_dir, "process.gif"), title=title,
                                reference=reference)
  timing = (f"{seconds:.1f} s, compiling included" if drawn.num_batches == 1 else
            f"{seconds:.1f} s ({drawn.num_batches} batches; the first, compiling included: "
            f"{first_batch_seconds:.1f} s)")
  logging.info("%d samples, %.0f network evaluations each, in %s: %s", num_samples,
               result["nfe"], timing, os.path.join(out_dir, "sample.png"))
  return result


def run(config: Config, workdir: str, options: Options) -> Dict[str, Any]:
  """``--mode sample`` without controlled generation: ``--checkpoint``, ``--num_samples``,
  ``--sample_folder``, ``--num_frames``, ``--allow_config_change``."""
  return sample(config, workdir, checkpoint=options.checkpoint, num_samples=options.num_samples,
                folder=options.sample_folder, num_frames=options.num_frames,
                allow_config_change=options.allow_config_change)
