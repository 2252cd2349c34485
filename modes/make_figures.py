"""``--mode figures``: pictures of the process for one checkpoint or the exact score
(:func:`make_figures`); the drawing itself is :mod:`figures`'."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import builders
import datasets
import figures
from datasets import toy_data
from infra import outputs
from infra.devices import Devices, gather
from modes import Options
from modes import parameters
from modes import sample

Config = ml_collections.ConfigDict

# The samplers compared by --mode figures: (name, config.sampling overrides).
_COMPARED_SAMPLERS = (
    ("Euler-Maruyama", dict(method="pc", predictor="euler_maruyama", corrector="none")),
    ("PC (reverse diffusion + Langevin)", dict(method="pc", predictor="reverse_diffusion",
                                               corrector="langevin")),
    ("probability-flow ODE", dict(method="ode")),
)


def _with_sampling(config: Config, **fields: Any) -> Config:
  """A copy of ``config`` with ``config.sampling`` fields replaced."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.sampling.update(fields)
  return copy


def _slerp(a: np.ndarray, b: np.ndarray, m: int) -> np.ndarray:
  """``m`` points from ``a`` to ``b`` along the great circle (latents are near-Gaussian, so their
  norm stays typical along the path). ``a, b: [...]`` -> ``[m, ...]``."""
  cos = float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  w = np.linspace(0.0, 1.0, m)
  if omega < 1e-6:
    return np.stack([(1 - v) * a + v * b for v in w])
  return np.stack([(np.sin((1 - v) * omega) * a + np.sin(v * omega) * b) / np.sin(omega)
                   for v in w])


def _pixels(shape: Tuple[int, ...]) -> Tuple[Tuple[Tuple[int, ...], ...], Tuple[str, ...]]:
  """A few coordinates of one example to follow over time, and their names."""
  if len(shape) == 1:
    return tuple((i,) for i in range(shape[0])), tuple(f"x{i + 1}" for i in range(shape[0]))
  h, w = shape[0], shape[1]
  at = ((h // 2, w // 2), (h // 4, w // 2), (3 * h // 4, w // 2), (h // 2, w // 4))
  return tuple((r, c, 0) for r, c in at), tuple(f"pixel ({r}, {c})" for r, c in at)


def make_figures(config: Config, workdir: str, *, checkpoint: Optional[str] = None,
                 folder: str = "figures", num_frames: int = 40,
                 allow_config_change: bool = False) -> Dict[str, str]:
  """Pictures of the process for one checkpoint (or the exact score, see :func:`sample`).

  Writes ``<workdir>/<folder>/<step_<step> | exact>/``:

  * ``comparison.png``: prior noise, Euler-Maruyama, PC (reverse diffusion + Langevin) and the
    probability-flow ODE side by side, each titled with its NFE (toys: over the data);
  * ``trajectories.png``: ``x(t)`` of a few pixels (toys: both coordinates) for the
    Euler-Maruyama and the ODE sampler from the same three prior draws, with ``+-std(t)`` of the
    SDE's perturbation kernel;
  * ``process_<sampler>.gif``: the reverse process of each compared sampler, ``num_frames``
    frames;
  * ``encoder.png``: the ODE as an encoder: test examples, their latents, the decoded latents
    (the largest round-trip error in data space in the title) and a decoded spherical
    interpolation between two latents;
  * toys: ``marginals.png``, the data perturbed to ``p_t`` at several ``t``.

  The samplers take their other settings (steps, snr, tolerances) from ``config.sampling``.

  Returns:
    ``{figure name: path}``.
  """
  if not figures.available():
    raise ValueError("--mode figures draws with matplotlib, which is not installed: "
                     "pip install matplotlib.")
  parameters.check_available(config, workdir, checkpoint, allow_config_change)
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  chosen = parameters.sampling_parameters(config, workdir, checkpoint,
                                          allow_config_change, model, template)
  out_dir = os.path.join(workdir, folder, chosen.folder)
  outputs.check_writable(out_dir)
  logging.info("Figures of %s into %s.", chosen.name, out_dir)
  vector = datasets.is_vector_data(config)
  batch = devices.round_batch(min(config.eval.batch_size, 2000 if vector else 64))
  _, inverse_scaler = datasets.data_scalers(config)
  reference = sample.data_reference(config, 2000)
  rng = jax.random.PRNGKey(config.seed)
  paths: Dict[str, str] = {}

  def draw(name: str, filename: str, figure: Any, *args: Any, **kwargs: Any) -> None:
    """Every process computes (the samplers are collective); the first one draws."""
    paths[name] = os.path.join(out_dir, filename)
    if jax.process_index() == 0:
      figure(*args, path=paths[name], **kwargs)

  def to_data(x) -> np.ndarray:
    return np.asarray(inverse_scaler(gather(x)))

  panels = [("prior noise", to_data(sde.prior_sampling(rng, datasets.input_shape(config, batch))),
             None)]
  trajectories = {}
  for name, fields in _COMPARED_SAMPLERS:
    sampler_config = _with_sampling(config, **fields)
    sampler = builders.build_sampler(sampler_config, sde, model, devices, batch,
                                     num_frames=num_frames)
    samples, nfe, trajectory = sampler(rng, chosen.params)  # one key: the same prior draws
    panels.append((name, to_data(samples), float(nfe)))
    trajectories[name] = trajectory
    tag = builders.sampler_tag(sampler_config)
    frames = to_data(trajectory.x)
    draw(f"process_{tag}", f"process_{tag}.gif", figures.process_animation,
         frames if vector else frames[:, :64], np.asarray(trajectory.t),
         title=figures.run_title(chosen.title, name, float(nfe)), reference=reference)
  draw("comparison", "comparison.png", figures.sampler_comparison, panels,
       title=figures.run_title(chosen.title), reference=reference)

  # The ODE from the Euler-Maruyama run's first prior draws (its frame 0).
  draws = 3
  sde_run = trajectories["Euler-Maruyama"]
  sde_frames = np.asarray(gather(sde_run.x))[:, :draws]
  encode, decode = builders.build_ode_codec(config, sde, model, devices)
  _, decode_frames = builders.build_ode_codec(config, sde, model, devices, num_frames=num_frames)
  _, _, ode_run = decode_frames(chosen.params, jnp.asarray(sde_frames[0]))
  coords, labels = _pixels(datasets.input_shape(config)[1:])
  pick = lambda frames: np.stack([frames[(slice(None), slice(None)) + c] for c in coords], -1)
  sde_t = np.asarray(sde_run.t)
  draw("trajectories", "trajectories.png", figures.coordinate_trajectories,
       sde_t, pick(sde_frames), pick(np.asarray(ode_run.x)),
       np.asarray(sde.marginal_std(jnp.asarray(sde_t))),
       title=figures.run_title(chosen.title, "Euler-Maruyama and the ODE, model space"),
       ode_t=np.asarray(ode_run.t), labels=labels)

  if vector:
    x = np.asarray(toy_data.sample_toy(config.data.dataset, 8, seed=config.seed + 7), np.float32)
  else:
    x = datasets.load_split(config, "test").images[:8].astype(np.float32) / 255.0
  scaler, _ = datasets.data_scalers(config)
  z, _ = encode(chosen.params, jnp.asarray(scaler(x)))
  x_rec, _ = decode(chosen.params, z)
  interpolation, _ = decode(chosen.params, jnp.asarray(_slerp(np.asarray(z[0]), np.asarray(z[1]),
                                                               8)))
  error = float(np.max(np.abs(np.asarray(inverse_scaler(x_rec)) - x)))
  logging.info("ODE round trip data -> latent -> data: largest error %.2e (data space).", error)
  draw("encoder", "encoder.png", figures.encoder_figure,
       x, np.asarray(z), np.asarray(inverse_scaler(x_rec)),
       np.asarray(inverse_scaler(interpolation)),
       title=figures.run_title(chosen.title, "probability-flow ODE encoder"), roundtrip_error=error)

  if vector:
    times = [config.sampling.eps] + [f * sde.T for f in (0.1, 0.25, 0.5, 1.0)]
    noise = np.random.default_rng(config.seed).standard_normal(reference.shape)
    at = jnp.asarray(times, jnp.float32)
    perturbed = [a * reference + std * noise for a, std in
                 zip(np.asarray(sde.mean_coeff(at)), np.asarray(sde.marginal_std(at)))]
    draw("marginals", "marginals.png", figures.toy_marginals, times, perturbed,
         title=f"{config.data.dataset} perturbed by the {config.training.sde} SDE")
  for name, path in sorted(paths.items()):
    logging.info("%s: %s", name, path)
  return paths


def run(config: Config, workdir: str, options: Options) -> Dict[str, str]:
  """``--mode figures``: ``--checkpoint``, ``--num_frames``, ``--allow_config_change``."""
  return make_figures(config, workdir, checkpoint=options.checkpoint,
                      num_frames=options.num_frames,
                      allow_config_change=options.allow_config_change)
