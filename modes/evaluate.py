"""``--mode eval``: evaluates every snapshot training wrote, or one of the authors' released files
(:func:`evaluate`).

For each checkpoint, with its EMA parameters: the loss over the whole test split
(``eval.enable_loss``), bits/dim through the probability-flow ODE (``eval.enable_bpd``) and the
SDE's likelihood bound (``eval.enable_bound``) over every example of ``eval.bpd_dataset`` exactly
once per repeat in a fixed order, dequantized as ``eval.dequantization`` says (the variational
dequantizer from ``workdir/dequantizer``, ``--mode train_dequantizer``), and
``eval.num_samples`` samples
with the configured sampler (``eval.enable_sampling``), scored by ``eval.sample_metrics``
(:mod:`evaluation.scorers`; toys: two-sample statistics against fresh data).

Writes ``workdir/<eval_folder>/``: per-checkpoint results saved piece by piece under
``step_<step>/`` with the settings that produced each piece (:mod:`evaluation.eval_cache`), so a
preempted evaluation resumes and a re-run with other settings recomputes what differs; samples
as ``.npz`` and a titled ``samples.png``; and ``summary.json``. Checkpoint index ``k``
(``eval.begin_ckpt``/``eval.end_ckpt``) means train step ``k * snapshot_freq``, as the authors
numbered their checkpoints (:func:`checkpoint_index`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Dict, List, Optional

import jax
import ml_collections
import numpy as np

import builders
import datasets
import evaluation
import figures
import losses
from datasets import batching
from datasets import toy_data
from evaluation import eval_cache
from evaluation import scorers
from infra import checkpoints
from infra import logs
from infra import outputs
from infra import run_config
from infra.devices import Devices, gather, process_rows
from models import utils as mutils
from modes import Options
from modes import sample
from modes import train_dequantizer

Config = ml_collections.ConfigDict
Array = jax.Array


# config.eval fields that pick which checkpoints and pieces run, or how many pieces a summary
# aggregates, without changing any piece; eval.batch_size and eval.bpd_dataset are recorded on
# their own (the batch size used, the split and its size). Every other eval field is taken to
# change bits/dim, so a new likelihood option invalidates saved pieces until it is listed here.
_EVAL_SELECTION_FIELDS = frozenset({
    "begin_ckpt", "end_ckpt", "enable_loss", "enable_bpd", "enable_bound", "enable_sampling",
    "num_samples", "bpd_num_repeats", "bpd_num_examples", "batch_size", "bpd_dataset"})
# The fields only one of the two likelihoods reads: a change to one keeps the other's pieces.
_ODE_ONLY_FIELDS = frozenset({"rtol", "atol", "hutchinson_type", "ode_solver"})
_BOUND_ONLY_FIELDS = frozenset({"bound_num_draws", "bound_time_sampling"})


def evaluate(config: Config, workdir: str, eval_folder: str = "eval",
             allow_config_change: bool = False, checkpoint: Optional[str] = None) -> Dict:
  """Evaluates every snapshot in ``[eval.begin_ckpt, eval.end_ckpt]``; returns the summary.

  With ``checkpoint``, the path of one of the authors' released files (:mod:`models.released`:
  Flax ``checkpoint_<k>`` or PyTorch ``checkpoint_<k>.pth``), that file alone is evaluated, its
  EMA parameters under its step, into ``<workdir>/<eval_folder>``; the workdir needs no
  checkpoints and no ``config.json`` (the file is checked against the config's network instead).

  The summary (also ``<eval_folder>/summary.json``) maps each step to its results and the
  ``"settings"`` they were computed with. Bits/dim and samples are saved piece by piece under
  ``<eval_folder>/step_<step>/`` with the settings that produced each piece
  (:mod:`evaluation.eval_cache`): a re-run with the same settings reuses them, one with other
  settings (batch size, sampler, tolerances, a retrained checkpoint, ...) recomputes them. A
  snapshot holding non-finite values is skipped with a warning and gets no summary entry.

  The config must match the one the workdir was trained with in every field that defines the
  trained model (:data:`run_config.MAY_CHANGE_IN_EVAL` lists those that may differ);
  ``allow_config_change`` accepts a deliberate difference.

  Raises:
    ValueError: a bad eval or sampling setting, found before any checkpoint is evaluated, or a
      config change (:class:`run_config.ConfigChangedError`).
    FileNotFoundError: no checkpoint in the range.
  """
  snapshots, steps = None, []
  if checkpoint is None:
    run_config.check(workdir, config, run_config.MAY_CHANGE_IN_EVAL, allow_config_change)
    # Listed first: a workdir with nothing to evaluate is told so before minutes of building
    # (compiled samplers, the MNIST classifier's training).
    snapshots = checkpoints.CheckpointStore(os.path.join(workdir, checkpoints.SNAPSHOTS),
                                            max_to_keep=None, writer=False)
    steps = _snapshot_steps(config, workdir, snapshots)
  elif not os.path.isfile(str(checkpoint)):
    raise FileNotFoundError(f"--checkpoint {checkpoint!r}: --mode eval takes one of the authors' "
                            "released files (checkpoint_<k> or checkpoint_<k>.pth); it evaluates "
                            "a workdir's own checkpoints without --checkpoint.")
  try:
    return _evaluate_steps(config, workdir, eval_folder, checkpoint, snapshots, steps)
  finally:
    if snapshots is not None:
      snapshots.close()


def _evaluate_steps(config: Config, workdir: str, eval_folder: str, checkpoint: Optional[str],
                    snapshots: Optional[checkpoints.CheckpointStore],
                    steps: List[int]) -> Dict[str, Any]:
  """:func:`evaluate` of the snapshots at ``steps``, or of the released ``checkpoint``."""
  eval_dir = os.path.join(workdir, eval_folder)
  outputs.check_writable(eval_dir)
  devices = Devices()
  ev = config.eval
  devices.check_batch(ev.batch_size, "eval.batch_size")
  _check_eval_counts(config)
  sde = builders.build_sde(config)
  enable_bound = bool(ev.get("enable_bound", False))
  likelihoods = ev.enable_bpd or enable_bound
  bpd_examples = datasets.num_examples(config, ev.bpd_dataset) if likelihoods else 0
  model, _, template = builders.init_state(config, devices)
  dequantizer_params, dequantizer_settings = None, {}
  if likelihoods and ev.dequantization == "variational":
    dequantizer_params, info = train_dequantizer.load_dequantizer(config, workdir)
    dequantizer_settings = {"dequantizer.step": info["step"],
                            "dequantizer.digest": eval_cache.tree_digest(dequantizer_params)}
    logging.info("Variational dequantizer: step %d, trained against the score model's step %s.",
                 info["step"], info["score_step"])
  # Built once, up front: a bad hutchinson_type, split or sampling.method fails before the long
  # passes, and new parameters reuse the compiled programs.
  bpd_fn = (builders.build_bpd_fn(config, sde, model, devices, dequantizer_params)
            if ev.enable_bpd else None)
  bound_fn = (builders.build_bound_fn(config, sde, model, devices, dequantizer_params)
              if enable_bound else None)
  batch_losses = _build_eval_losses(config, sde, model) if ev.enable_loss else None
  sampler, sample_batch, scorer = None, 0, None
  if ev.enable_sampling:
    sample_batch = devices.round_batch(min(ev.batch_size, ev.num_samples))
    sampler = builders.build_sampler(config, sde, model, devices, sample_batch)
    scorer, why_not = scorers.build_sample_scorer(config, devices)
    if why_not:
      logging.warning("%s", why_not)

  if checkpoint is not None:
    released = builders.load_released(config, str(checkpoint))[1]
    steps = [released.step]
    logging.info("Evaluating the authors' step-%d checkpoint %s (%s) into %s.", released.step,
                 checkpoint, released.format, eval_dir)
  else:
    logging.info("Evaluating %d checkpoint(s) in %s (steps %s) into %s.", len(steps),
                 os.path.join(workdir, checkpoints.SNAPSHOTS), ", ".join(map(str, steps)),
                 eval_dir)

  summary_path = os.path.join(eval_dir, "summary.json")
  summary = outputs.load_json(summary_path) if os.path.exists(summary_path) else {}
  for step in steps:
    state = (template.replace(ema_params=released.params) if snapshots is None else
             snapshots.restore(step, template))
    bad = checkpoints.non_finite_leaves(state)
    if bad:
      more = f" and {len(bad) - 1} more leaves" if len(bad) > 1 else ""
      logging.warning("Skipping the checkpoint at step %d: it holds non-finite values (%s%s).",
                      step, bad[0], more)
      # An entry left from an earlier evaluation would describe another checkpoint.
      if summary.pop(str(step), None) is not None and jax.process_index() == 0:
        outputs.save_json(summary_path, summary)
      continue
    cache = eval_cache.EvalCache(os.path.join(eval_dir, f"step_{step}"))
    shared = _network_settings(config, step, eval_cache.tree_digest(state.ema_params))
    settings = dict(shared)
    result: Dict[str, Any] = {"step": step}
    if ev.enable_loss:
      result["loss"] = _eval_loss(config, batch_losses, state.ema_params, devices,
                                  mutils.num_classes(model))
      settings.update(_loss_settings(config))
    for kind, fn in (("bpd", bpd_fn), ("bound", bound_fn)):
      if fn is None:
        continue
      kind_settings = {**shared, **_bpd_settings(config, bpd_examples, kind),
                       **dequantizer_settings}
      result.update(_eval_likelihood(config, kind, fn, bpd_examples, state.ema_params, devices,
                                     cache, kind_settings, step))
      settings.update({**kind_settings, "eval.bpd_num_repeats": ev.bpd_num_repeats,
                       "eval.bpd_num_examples": _bpd_limit(config)})
    if ev.enable_sampling:
      sample_settings = {**shared, **_sample_settings(config, sample_batch)}
      result.update(_eval_samples(config, sde, sampler, sample_batch, state.ema_params, cache,
                                  sample_settings, step, scorer))
      settings.update({**sample_settings, "eval.num_samples": ev.num_samples,
                       **(scorer.settings if scorer else {})})
    logging.info("step %d: %s", step, describe_result(result))
    result["settings"] = eval_cache.canonical(settings)
    summary[str(step)] = result
    if jax.process_index() == 0:
      outputs.save_json(summary_path, summary)
  return summary


def _snapshot_steps(config: Config, workdir: str,
                    snapshots: checkpoints.CheckpointStore) -> List[int]:
  """The steps of the snapshots with index in ``[eval.begin_ckpt, eval.end_ckpt]``."""
  ev, freq = config.eval, config.training.snapshot_freq
  steps = [s for s in snapshots.all_steps()
           if ev.begin_ckpt <= checkpoint_index(s, freq) <= ev.end_ckpt]
  if not steps:
    snapshots.close()
    raise FileNotFoundError(
        f"No checkpoint with index in [{ev.begin_ckpt}, {ev.end_ckpt}] (steps "
        f"{max(ev.begin_ckpt - 1, 0) * freq + 1}..{ev.end_ckpt * freq}) under "
        f"{workdir}/checkpoints; available steps: {snapshots.all_steps() or 'none'}. Train "
        "first or set --config.eval.begin_ckpt/end_ckpt.")
  return steps


def checkpoint_index(step: int, snapshot_freq: int) -> int:
  """The index ``k`` of the snapshot at ``step`` (``eval.begin_ckpt``/``end_ckpt`` count these):
  ``step = k * snapshot_freq`` as the authors numbered them, and a final step that is not a
  multiple (``training.n_iters`` of any value) belongs to the interval it ends, ``ceil``."""
  return -(-step // max(snapshot_freq, 1))


def describe_result(result: Dict[str, Any]) -> str:
  """One line for a person: an evaluated checkpoint's loss, bits/dim and sample statistics."""
  parts = []
  if "loss" in result:
    parts.append(f"test loss {result['loss']:.4g}")
  if "bpd" in result:
    parts.append(f"{result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim "
                 f"({result['bpd_count']} {result['bpd_dataset']} examples, "
                 f"{result['bpd_mean_nfe']:.0f} NFE, {result['bpd_scale']})")
  if "bound" in result:
    parts.append(f"bound {result['bound']:.4f} ± {result['bound_stderr']:.4f} bits/dim (Monte "
                 f"Carlo part ± {result['bound_mc_stderr']:.4f}; {result['bound_count']} "
                 f"{result['bpd_dataset']} examples, {result['bound_num_draws']} draws each, "
                 f"{result['bpd_scale']})")
  if "num_samples" in result:
    samples = f"{result['num_samples']} samples ({result['sampling_nfe']:.0f} NFE)"
    if "mmd" in result:
      samples += (f", MMD to data {result['mmd']:.4f} (prior {result['prior_mmd']:.4f}), "
                  f"energy distance {result['energy_distance']:.4f} "
                  f"(prior {result['prior_energy_distance']:.4f})")
    if "fid" in result:
      samples += f", FID {result['fid']:.2f}, IS {result['inception_score']:.2f}"
      if "kid" in result:
        samples += f", KID {result['kid']:.4f}"
    if "mnist_fd" in result:
      samples += (f", MNIST classifier: FD {result['mnist_fd']:.3f}, KID "
                  f"{result['mnist_kid']:.4f}, IS {result['mnist_is']:.2f}, class KL from "
                  f"uniform {result['mnist_class_kl_from_uniform']:.3f}")
    parts.append(samples)
  return "; ".join(parts) if parts else "nothing enabled in config.eval"


def _check_eval_counts(config: Config) -> None:
  """One-line ValueErrors for counts that would leave an enabled evaluation with nothing."""
  ev = config.eval
  if ev.enable_sampling and ev.num_samples < 1:
    raise ValueError(f"eval.num_samples must be >= 1 to evaluate samples, got {ev.num_samples}; "
                     "set --config.eval.num_samples=... (or set "
                     "--config.eval.enable_sampling=False).")
  likelihoods = ev.enable_bpd or ev.get("enable_bound", False)
  if likelihoods and ev.bpd_num_repeats < 1:
    raise ValueError(f"eval.bpd_num_repeats must be >= 1 to evaluate bits/dim, got "
                     f"{ev.bpd_num_repeats}; set --config.eval.bpd_num_repeats=... (or set "
                     "--config.eval.enable_bpd=False and enable_bound=False).")
  if likelihoods and _bpd_limit(config) < 0:
    raise ValueError(f"eval.bpd_num_examples must be >= 0 (0: the whole split), got "
                     f"{_bpd_limit(config)}.")


def _bpd_limit(config: Config) -> int:
  """``eval.bpd_num_examples``: bits/dim over only the first that many examples; 0: all."""
  return int(config.eval.get("bpd_num_examples", 0) or 0)


def _network_settings(config: Config, step: int, digest: str) -> Dict[str, Any]:
  """What every result of the checkpoint at ``step`` depends on: its EMA parameters (``digest``,
  :func:`eval_cache.tree_digest`), the network and SDE they are run in, the data and the seed."""
  training = config.training
  return {"checkpoint.step": step, "checkpoint.digest": digest,
          "training.sde": training.sde, "training.continuous": training.continuous,
          # bf16 activations change every output of the network.
          "training.mixed_precision": bool(training.get("mixed_precision", False)),
          **run_config.section(config, "model"), **run_config.section(config, "data"),
          "seed": config.seed}


def _loss_settings(config: Config) -> Dict[str, Any]:
  """The fields the evaluation loss reads beyond :func:`_network_settings`."""
  training = config.training
  return {"training.reduce_mean": training.reduce_mean,
          "training.likelihood_weighting": training.likelihood_weighting,
          "training.eps": training.eps, "eval.batch_size": config.eval.batch_size}


def _bpd_settings(config: Config, num_examples: int, kind: str = "bpd") -> Dict[str, Any]:
  """Settings of ``kind`` (``'bpd'``: the ODE's bits/dim, ``'bound'``: the bound) beyond
  :func:`_network_settings`: the likelihood fields of ``config.eval`` it reads
  (``dequantization``, ``hutchinson_type``, ``rtol``, ``bound_num_draws``, ...), the split, its
  size and the batch size; the bound also its smallest time ``training.eps``."""
  ev = config.eval
  other = _BOUND_ONLY_FIELDS if kind == "bpd" else _ODE_ONLY_FIELDS
  likelihood = {name: value for name, value in run_config.section(config, "eval").items()
                if name.split(".")[1] not in _EVAL_SELECTION_FIELDS | other}
  extra = {"training.eps": config.training.eps} if kind == "bound" else {}
  return {**likelihood, **extra, "eval.batch_size": ev.batch_size,
          "eval.bpd_dataset": ev.bpd_dataset, "eval.bpd_dataset_size": num_examples}


def _sample_settings(config: Config, batch_size: int) -> Dict[str, Any]:
  """Sampling settings beyond :func:`_network_settings`: ``config.sampling`` and the batch size
  the sampler runs (``eval.batch_size`` capped by ``eval.num_samples``)."""
  return {**run_config.section(config, "sampling"), "eval.sampling_batch_size": batch_size}


def _eval_batches(config: Config, split: str, batch_size: int,
                  dequantized: bool = True) -> batching.Batches:
  """One pass over every example of ``split`` in stored order (this process's slices);
  ``dequantized=False``: without ``data.uniform_dequantization`` (the likelihoods dequantize)."""
  if not dequantized and config.data.uniform_dequantization:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.uniform_dequantization = False
  return datasets.get_dataset(config, split=split, batch_size=batch_size, train=False,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())


def _build_eval_losses(config: Config, sde, model) -> Callable[[Any, Array, Array], Array]:
  """``batch_losses(params, rng, x) -> [B]`` per-example DSM losses, jitted once per evaluation
  so that every checkpoint reuses the compiled program."""
  loss_fn = builders.build_loss_fn(config, sde, model, train=False)
  return jax.jit(functools.partial(losses.per_example_losses, loss_fn))


def _eval_loss(config: Config, batch_losses, params, devices: Devices, num_classes: int) -> float:
  """Mean DSM loss of ``params`` (the EMA parameters) over every example of the test split, once
  each (class-conditional: given its label); ``batch_losses`` is :func:`_build_eval_losses`'."""
  scaler, _ = datasets.data_scalers(config)
  rng = jax.random.PRNGKey(config.seed + 2)
  total, count = 0.0, 0.0
  for k, batch in enumerate(_eval_batches(config, "test", config.eval.batch_size)):
    x = devices.put_batch(batching.model_batch(batch, scaler, num_classes))
    per_example = np.asarray(gather(batch_losses(params, jax.random.fold_in(rng, k), x)))
    mask = np.asarray(gather(devices.put_batch(batch["mask"])))
    total += float((per_example * mask).sum())
    count += float(mask.sum())
  return total / max(count, 1.0)


def _eval_likelihood(config: Config, kind: str, fn, num_examples: int, params,
                     devices: Devices, cache: eval_cache.EvalCache,
                     settings: eval_cache.Settings, step: int) -> Dict[str, Any]:
  """Bits/dim (``kind = 'bpd'``, the ODE) or the bound (``'bound'``) over every example of
  ``eval.bpd_dataset``, repeated, in batches of ``eval.batch_size``.

  ``eval.bpd_num_repeats`` passes; ``eval.bpd_num_examples > 0`` restricts each to the first that
  many examples of the split's fixed order (a quick, reproducible subset; 0 means all). Each batch
  of each pass is one piece of ``cache``, ``<kind>_repeat{r}_batch{k}`` (the values per example
  and the NFE, or each example's Monte Carlo standard error), so a preempted evaluation resumes
  where it stopped. Both kinds see the same examples with the same dequantization draws.

  Args:
    fn: ``builders.build_bpd_fn``'s ``(rng, params, images: [B, ...]) -> (bpd: [B], nfe)`` or
      ``builders.build_bound_fn``'s ``-> (bpd: [B], stderr: [B])``.
    num_examples: the number of examples in the split.
    settings: what every piece depends on; each piece adds its repeat and batch index.
  """
  ev = config.eval
  limit = _bpd_limit(config)
  covered = min(num_examples, limit) if limit else num_examples
  pieces = [(repeat, k) for repeat in range(ev.bpd_num_repeats)
            for k in range(-(-covered // ev.batch_size))]
  second = "nfe" if kind == "bpd" else "stderr"

  def piece(repeat: int, k: int):
    return (f"{kind}_repeat{repeat}_batch{k}",
            {**settings, "piece.repeat": repeat, "piece.batch_index": k})

  # Every process decides what to reuse before any piece is (re)written: the computation is
  # collective, so a piece one process computes, all must.
  done = {p: cache.load(*piece(*p), ("bpd", second)) for p in pieces}
  base = jax.random.PRNGKey(config.seed + 3)
  batches = None
  todo = [p for p in pieces if done[p] is None]
  name = "bits/dim" if kind == "bpd" else "bound"
  progress = logs.PieceProgress(f"step {step} {name}", len(todo))
  for repeat, k in todo:
    if batches is None:
      batches = _eval_batches(config, ev.bpd_dataset, ev.batch_size, dequantized=False)
    batch = batches.batch(k)
    rng = jax.random.fold_in(jax.random.fold_in(base, repeat), k)
    images = devices.put_batch(np.asarray(batch["image"], np.float32))
    bpd, extra = fn(rng, params, images)
    mask = np.asarray(gather(devices.put_batch(batch["mask"]))) > 0
    extra = np.asarray(extra) if kind == "bpd" else np.asarray(gather(extra))[mask]
    done[repeat, k] = {"bpd": np.asarray(gather(bpd))[mask], second: extra}
    cache.save(*piece(repeat, k), **done[repeat, k])
    so_far = np.concatenate([done[p]["bpd"] for p in todo if done[p] is not None])
    progress.update(f"{so_far.mean():.4f} so far")
  progress.close()
  # The last batch may reach past eval.bpd_num_examples: only the examples before it count.
  keep = {(r, k): covered - k * ev.batch_size for r, k in pieces}
  bpd = np.concatenate([done[p]["bpd"][:keep[p]] for p in pieces])
  stderr = float(bpd.std() / np.sqrt(bpd.size))
  scale = _scale_description(config)
  if kind == "bpd":
    nfe = [float(done[p]["nfe"]) for p in pieces]
    return {"bpd": float(bpd.mean()), "bpd_stderr": stderr, "bpd_count": int(bpd.size),
            "bpd_mean_nfe": float(np.mean(nfe)), "bpd_dataset": ev.bpd_dataset,
            "bpd_offset_bits": builders.bpd_offset_bits(config), "bpd_scale": scale}
  mc = np.concatenate([done[p]["stderr"][:keep[p]] for p in pieces])
  return {"bound": float(bpd.mean()), "bound_stderr": stderr,
          "bound_mc_stderr": float(np.sqrt(np.sum(mc ** 2)) / mc.size),
          "bound_count": int(bpd.size), "bound_num_draws": int(ev.bound_num_draws),
          "bpd_dataset": ev.bpd_dataset, "bpd_offset_bits": builders.bpd_offset_bits(config),
          "bpd_scale": scale}


def _scale_description(config: Config) -> str:
  """What a bits/dim result is of, stated with it: the data's levels and the dequantization."""
  if datasets.is_vector_data(config):
    return "continuous data"
  num_bits = int(config.data.get("num_bits", 8))
  kind = config.eval.dequantization
  what = ("the density at the grid points, not a discrete bits/dim" if kind == "none"
          else f"{kind} dequantization")
  return f"{num_bits}-bit data ({2 ** num_bits} levels), {what}"


def _eval_samples(config: Config, sde, sampler, batch_size: int, params,
                  cache: eval_cache.EvalCache, settings: eval_cache.Settings, step: int,
                  scorer: Optional[scorers.SampleScorer] = None) -> Dict[str, Any]:
  """Draws ``eval.num_samples`` samples in batches, each one piece of ``cache``, ``samples_{k}``
  (the samples in data space, ``[batch_size, ...]``, their NFE and a picture), resumable; then
  the ``scorer``'s sample-quality numbers (:func:`_score_samples`).

  Each piece keeps its NFE, so a resumed evaluation reports the same ``sampling_nfe`` (the mean
  over batches) as an uninterrupted one.

  Args:
    sampler: ``builders.build_sampler``'s ``sample(rng, params) -> (samples: [batch_size, ...],
      nfe)``, in model space.
    settings: what every piece depends on; each piece adds its batch index.
    scorer: ``scorers.build_sample_scorer``'s, or None for no FID-like numbers.
  """
  ev = config.eval
  _, inverse_scaler = datasets.data_scalers(config)
  pieces = range(-(-ev.num_samples // batch_size))

  def piece(k: int):
    return f"samples_{k}", {**settings, "piece.batch_index": k}

  # As in _eval_likelihood: every process decides what to reuse before any piece is rewritten.
  done: Dict[int, Optional[Dict[str, np.ndarray]]] = {
      k: cache.load(*piece(k), ("samples", "nfe")) for k in pieces}
  base = jax.random.PRNGKey(config.seed + 4)
  todo = [k for k in pieces if done[k] is None]
  progress = logs.PieceProgress(f"step {step} sampling", len(todo))
  for k in todo:
    samples, nfe = sampler(jax.random.fold_in(jax.random.fold_in(base, step), k), params)
    samples, nfe = np.asarray(inverse_scaler(gather(samples))), np.asarray(nfe)
    if not np.all(np.isfinite(samples)):
      raise FloatingPointError(
          f"Sampling the step-{step} checkpoint gave non-finite values (sampling.method="
          f"{config.sampling.method}: the network diverged, or the ODE solver hit its step "
          "cap); nothing was saved for this batch.")
    cache.save_samples(*piece(k), samples, nfe=nfe)
    done[k] = {"samples": samples, "nfe": nfe}
    progress.update(f"{float(nfe):.0f} NFE")
  progress.close()
  samples = np.concatenate([done[k]["samples"] for k in pieces])[:ev.num_samples]
  result: Dict[str, Any] = {"num_samples": int(len(samples)),
                            "sampling_nfe": float(np.mean([float(done[k]["nfe"]) for k in pieces]))}
  picture = os.path.join(cache.directory, "samples.png")
  # Drawn again only with new samples: an unchanged re-run rewrites nothing.
  if jax.process_index() == 0 and figures.available() and (todo or not os.path.exists(picture)):
    tag, reference = builders.sampler_tag(config), sample.data_reference(config, 2000)
    title = figures.run_title(step, tag, result["sampling_nfe"])
    if reference is not None:
      figures.toy_samples_vs_data(samples, reference, picture, title=title)
    else:
      figures.sampler_comparison([(tag, samples[:64], result["sampling_nfe"])], picture,
                                 title=title)
  if datasets.is_vector_data(config):
    # Two-sample statistics against fresh data, and the prior's as a reference point.
    data = toy_data.sample_toy(config.data.dataset, len(samples), seed=config.seed + 5)
    prior = np.asarray(sde.prior_sampling(jax.random.PRNGKey(config.seed + 6), samples.shape))
    result.update(evaluation.two_sample_statistics(samples, data, prior))
  if scorer is not None:
    result.update(_score_samples(scorer, samples, batch_size, cache, settings))
  return result


def _score_samples(scorer: scorers.SampleScorer, samples: np.ndarray, batch_size: int,
                   cache: eval_cache.EvalCache, settings: eval_cache.Settings) -> Dict[str, Any]:
  """The scorer's numbers for ``samples: [N, H, W, C]`` in [0, 1], read at their 8-bit levels
  (what their PNGs hold and what FID is defined on; the authors truncated, this rounds).

  The features are computed in global batches of ``batch_size`` (each process feeds its slice)
  and cached per batch beside the samples (``<scorer.name>_batch<k>``), so an interrupted
  evaluation resumes and a re-run with the same samples and network reuses them.
  """
  images = np.round(np.clip(samples, 0.0, 1.0) * 255.0) / 255.0
  rows = process_rows(batch_size)
  batches = [{name: array[rows] for name, array in batch.items()}
             for batch in batching.padded_batches({"image": images}, batch_size)]
  stats = evaluation.reference_statistics(scorer.feature_fn, batches, cache=cache,
                                          settings={**settings, **scorer.settings},
                                          name=scorer.name)
  metrics = scorer.metrics(stats["pool_3"], stats["logits"])
  if "fid_warning" in metrics:
    logging.warning("%s", metrics["fid_warning"])
  return metrics


def run(config: Config, workdir: str, options: Options) -> Dict:
  """``--mode eval``: ``--eval_folder``, ``--checkpoint`` (a released file),
  ``--allow_config_change``."""
  return evaluate(config, workdir, options.eval_folder,
                  allow_config_change=options.allow_config_change, checkpoint=options.checkpoint)
