"""``--mode reflow``: trains a second flow on the couplings of a trained one (:func:`reflow`).

Reads the newest snapshot of ``--workdir`` (or ``--checkpoint``): the teacher, whose EMA
parameters draw ``reflow.num_pairs`` pairs ``(x0, x(T))`` with ``config.sampling`` (from prior
draws ``x(T)``; the final denoising off, so ``x0`` is the flow's own endpoint; a sampler that
takes its ``x(T)``: the ODE or a fast sampler). Then it trains, in ``<workdir>/reflow/``, a
network that starts from the teacher's EMA parameters (fresh optimizer state) on those pairs:
the loss of ``config.training`` with each image's noise the coupled ``z`` of
:func:`reflow.coupling_noise` instead of fresh noise (flow matching on straight lines between
the pair's ends for a rectified flow). It is the training loop of ``--mode train``
(:mod:`modes.training_loop`) with the pairs as data: ``training.n_iters`` steps, checkpoints,
exact resume, ``config.json``; ``--mode eval`` / ``sample`` / ``figures`` with ``--workdir
<workdir>/reflow`` then use it like any run. Batches are the pairs in a fresh permutation per
epoch, a function of the step.

Written to ``<workdir>/reflow/``: ``pairs.npz`` (``x0``, ``noise``, ``x_end`` in model space,
with the teacher's step, sampler and count, checked on resume: pairs drawn otherwise are
refused), the run's checkpoints and log, and at the end ``straightness.json``: the straightness
of the teacher's and the new flow's trajectories from the same ``reflow.straightness_samples``
prior draws (``reflow.straightness_steps`` Euler steps; :func:`reflow.euler_straightness`), mean
and standard error; for 2-D data also ``paths.png``, 64 trajectories of each.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
import figures
import losses
import reflow as reflow_lib
from infra import outputs
from infra.devices import Devices, gather, process_rows
from modes import Options
from modes import parameters
from modes.train import ScoreTraining
from modes.training_loop import Metrics

Config = ml_collections.ConfigDict
SUBDIR = "reflow"
PAIRS = "pairs.npz"


class ReflowTraining(ScoreTraining):
  """:class:`modes.train.ScoreTraining` on the teacher's pairs (module docstring)."""

  def __init__(self, config: Config, teacher_workdir: str, checkpoint: Optional[str] = None,
               devices: Optional[Devices] = None):
    super().__init__(config, devices)
    reflow = config.reflow
    if reflow.num_pairs < config.training.batch_size:
      raise ValueError(f"reflow.num_pairs ({reflow.num_pairs}) must be at least "
                       f"training.batch_size ({config.training.batch_size}).")
    if reflow.straightness_samples < 2 or reflow.straightness_steps < 1:
      raise ValueError("reflow.straightness_samples must be >= 2 and reflow.straightness_steps "
                       ">= 1.")
    if builders.is_exact_score(self.model):
      raise ValueError("--mode reflow trains a network from a trained flow's parameters; "
                       "model.name = 'exact_score' has none. Train a network first.")
    if config.sampling.method == "pc":
      raise ValueError("--mode reflow draws each pair from its own x(T): use a sampler that "
                       "starts from given x(T), --config.sampling.method=ode or a fast sampler "
                       "(ddim, dpm_solver, unipc, ipndm, edm_heun), not pc.")
    parameters.check_available(config, teacher_workdir, checkpoint, False)
    self.teacher = parameters.sampling_parameters(config, teacher_workdir, checkpoint, False,
                                                  self.model, self.state)
    self.out_dir = os.path.join(teacher_workdir, SUBDIR)
    pair_config = ml_collections.ConfigDict(config.to_dict())
    pair_config.sampling.noise_removal = False
    self._pair_config = pair_config
    self._score_fn_of = builders.build_score_fn(config, self.sde, self.model, self.devices)
    self.pairs = self._load_or_draw_pairs()
    # Copies: the train step donates the state's buffers, and the teacher is measured at the end.
    copy = lambda tree: jax.tree_util.tree_map(lambda a: a.copy(), tree)
    self.state = self.state.replace(params=copy(self.teacher.params),
                                    ema_params=copy(self.teacher.params))

  # --------------------------------------------------------------------------- pairs

  def _pair_settings(self) -> Dict[str, Any]:
    return {"teacher_step": int(self.teacher.step), "num_pairs": int(self.config.reflow.num_pairs),
            "sampler": builders.sampler_tag(self._pair_config), "seed": int(self.config.seed)}

  def _load_or_draw_pairs(self) -> Dict[str, np.ndarray]:
    """The pairs of ``pairs.npz`` when drawn with these settings; drawn now if absent."""
    path = os.path.join(self.out_dir, PAIRS)
    settings = self._pair_settings()
    if os.path.isfile(path):
      with np.load(path) as stored:
        recorded = json.loads(str(stored["settings"]))
        if recorded != settings:
          raise ValueError(f"{path} holds pairs drawn with {recorded}, not {settings}; use the "
                           "settings it was drawn with, or move the reflow directory away.")
        return {name: stored[name] for name in ("x0", "noise", "x_end")}
    pairs = self._draw_pairs()
    if jax.process_index() == 0:
      outputs.check_writable(self.out_dir)
      os.makedirs(self.out_dir, exist_ok=True)
      tmp = path + ".tmp.npz"
      np.savez(tmp, settings=json.dumps(settings), **pairs)
      os.replace(tmp, path)
    return pairs

  def _draw_pairs(self) -> Dict[str, np.ndarray]:
    """``reflow.num_pairs`` endpoints of the teacher's flow from prior draws, in batches of
    ``eval.batch_size``."""
    config, sde = self.config, self.sde
    batch = self.devices.round_batch(min(config.eval.batch_size, config.reflow.num_pairs))
    shape = datasets.input_shape(config, batch)
    sampling_fn = builders.build_sampling_fn(self._pair_config, sde, shape)
    score_fn_of = self._score_fn_of

    @jax.jit
    def draw(rng, params):
      prior_rng, sample_rng = jax.random.split(rng)
      x_end = sde.prior_sampling(prior_rng, shape)
      x0 = sampling_fn(sample_rng, score_fn_of(params), x_end)[0]
      return x0, x_end

    num_batches = -(-config.reflow.num_pairs // batch)
    logging.info("Drawing %d pairs from the step-%s teacher with %s (%d batches of %d).",
                 config.reflow.num_pairs, self.teacher.step, builders.sampler_tag(
                     self._pair_config), num_batches, batch)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x5EF10)
    x0s, ends = [], []
    for k in range(num_batches):
      x0, x_end = draw(jax.random.fold_in(key, k), self.teacher.params)
      x0s.append(gather(x0))
      ends.append(gather(x_end))
    x0 = np.concatenate(x0s)[:config.reflow.num_pairs]
    x_end = np.concatenate(ends)[:config.reflow.num_pairs]
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(x_end))):
      raise FloatingPointError("The teacher's flow gave non-finite pairs (the ODE solver hit its "
                               "step cap, or the network diverged); nothing was written.")
    noise = np.asarray(reflow_lib.coupling_noise(sde, x0, x_end))
    return {"x0": x0.astype(np.float32), "noise": noise.astype(np.float32),
            "x_end": x_end.astype(np.float32)}

  # --------------------------------------------------------------------------- hooks

  def batches(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    """This process's rows of the global batch of each step from ``start_step + 1``: the pairs
    in the permutation of their epoch (seeded by the epoch), so a resume continues exactly."""
    batch_size = self.config.training.batch_size
    n = len(self.pairs["x0"])
    per_epoch = n // batch_size
    rows = process_rows(batch_size)
    step = start_step
    while True:
      epoch, k = divmod(step, per_epoch)
      order = np.random.default_rng([self.config.seed, epoch]).permutation(n)
      index = order[k * batch_size:(k + 1) * batch_size][rows]
      yield {"image": self.pairs["x0"][index], "noise": self.pairs["noise"][index]}
      step += 1

  def next_steps(self, state: losses.TrainState, batches: Iterator[Dict[str, np.ndarray]],
                 n: int) -> Tuple[losses.TrainState, Metrics]:
    """``n`` steps on the next ``n`` pair batches (already in model space)."""
    parts = [next(batches) for _ in range(n)]
    stacked = {name: np.stack([part[name] for part in parts]) for name in parts[0]}
    return self.train_steps(state, self.devices.put_batch(stacked, stacked=True))

  def finish(self, workdir: str) -> Dict[str, Any]:
    """Straightness of the teacher's and the new flow's trajectories from the same prior draws
    (``straightness.json``; ``paths.png`` for 2-D data)."""
    config, sde = self.config, self.sde
    count = self.devices.round_batch(config.reflow.straightness_samples)
    shape = datasets.input_shape(config, count)
    x_end = sde.prior_sampling(jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x57A1), shape)
    keep_path = datasets.is_vector_data(config) and shape[1:] == (2,)
    score_fn_of, steps = self._score_fn_of, int(config.reflow.straightness_steps)
    eps = float(config.sampling.eps)

    @jax.jit
    def measure(params, x_end):
      velocity = reflow_lib.flow_velocity(sde, score_fn_of(params))
      return reflow_lib.euler_straightness(velocity, x_end, sde.T, eps, steps, keep_path)

    result: Dict[str, Any] = {"teacher_step": self.teacher.step, "num_samples": count,
                              "euler_steps": steps, "eps": eps}
    paths = {}
    for name, params in (("teacher", self.teacher.params), ("reflow", self.state.ema_params)):
      measured = measure(params, x_end)
      mean, se = reflow_lib.straightness_summary(gather(measured.straightness))
      result[name] = {"straightness": mean, "straightness_se": se}
      if keep_path:
        paths[name] = gather(measured.path)[:, :64]
    logging.info("Straightness (%d trajectories, %d Euler steps): teacher %.4g ± %.2g, reflow "
                 "%.4g ± %.2g.", count, steps, result["teacher"]["straightness"],
                 result["teacher"]["straightness_se"], result["reflow"]["straightness"],
                 result["reflow"]["straightness_se"])
    if jax.process_index() == 0:
      outputs.save_json(os.path.join(workdir, "straightness.json"), result)
      if paths and figures.available():
        figures.flow_paths(paths, os.path.join(workdir, "paths.png"),
                           title=f"{config.data.dataset}: teacher step {self.teacher.step} vs "
                                 f"reflow, {steps} Euler steps")
    return result


def reflow(config: Config, workdir: str, checkpoint: Optional[str] = None,
           allow_config_change: bool = False) -> Optional[Dict[str, Any]]:
  """Draws the teacher's pairs (or reuses them) and trains the reflowed flow in
  ``<workdir>/reflow`` (module docstring); returns the straightness record, or None when
  stopped by a signal.

  Raises:
    FileNotFoundError: no teacher checkpoint. ValueError: a bad setting, a config that differs
    from the teacher's, a sampler that cannot start from given ``x(T)``, or pairs drawn with
    other settings. FloatingPointError: non-finite pairs, or training diverged.
  """
  loop = ReflowTraining(config, workdir, checkpoint)
  return loop.run(loop.out_dir, allow_config_change)


def run(config: Config, workdir: str, options: Options) -> None:
  """``--mode reflow``."""
  reflow(config, workdir, options.checkpoint, allow_config_change=options.allow_config_change)
