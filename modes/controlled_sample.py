"""``--mode sample`` with ``--inpaint``, ``--colorize`` or ``--class_label``: controlled generation
with one checkpoint (:func:`controlled_sample`).

Exactly one task; its flags are checked here, once (:func:`parse_task`), whether they come from
the command line or from a call:

* ``--inpaint=REGION`` (``controllable_generation.INPAINT_REGIONS``): the first ``num_samples``
  test images with the region sampled and the rest kept exactly;
* ``--colorize``: grey versions of the first ``num_samples`` test images coloured;
* ``--class_label=K`` (or ``all``, every class in turn): samples of class ``K``, by classifier
  guidance (``--classifier_config``, ``--classifier_workdir``, ``--guidance_scale``) or, for a
  class-conditional model, classifier-free guidance (``--cfg_weight``).

Inpainting and colorization run the replacement form of the PC sampler of ``config.sampling``
(``method = 'pc'``, any predictor and corrector, ``sde.N`` steps); guidance any
``sampling.method``. Outputs go to ``<workdir>/<folder>/<step>_<task>_<sampler>/`` (``<step>``
as :mod:`modes.sample`'s folders, ``<task>`` e.g. ``inpaint-left_half``, ``colorize``,
``class3-scale1``, ``classall-cfg2``): ``grid.png``, ``sample.npz`` and ``sample.json`` (NFE per
sample, time, settings); never into the checkpoint directories.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Dict, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import builders
import controllable_generation
import datasets
import figures
import sde_lib
from datasets import batching
from evaluation import eval_cache
from evaluation import scorers
from infra import outputs
from infra import run_config
from infra.devices import Devices, process_rows
from modes import Options
from modes import parameters
from modes import sample
from modes import train_classifier

Config = ml_collections.ConfigDict
ClassLabel = Union[int, str]

class Task(NamedTuple):
  """What controlled generation was asked for (:func:`parse_task`).

  Attributes:
    kind: ``'inpaint'``, ``'colorize'``, ``'guidance'`` (classifier guidance) or ``'cfg'``
      (classifier-free guidance of a class-conditional model).
    inpaint: the region to inpaint (``kind = 'inpaint'``).
    class_label: a class index or ``'all'`` (guidance).
    classifier_config: the classifier's config (``kind = 'guidance'``).
    classifier_workdir: the classifier's workdir (``kind = 'guidance'``).
    guidance_scale: the classifier gradient's scale (default 1).
    cfg_weight: the classifier-free guidance weight (default 0).
  """
  kind: str
  inpaint: Optional[str] = None
  class_label: Optional[ClassLabel] = None
  classifier_config: Optional[Config] = None
  classifier_workdir: Optional[str] = None
  guidance_scale: float = 1.0
  cfg_weight: float = 0.0

  @property
  def guided(self) -> bool:
    return self.kind in ("guidance", "cfg")

  @property
  def label(self) -> str:
    """The task in folder names and messages (``inpaint-left_half``, ``class3-scale1``)."""
    return {"inpaint": f"inpaint-{self.inpaint}", "colorize": "colorize",
            "guidance": f"class{self.class_label}-scale{self.guidance_scale:g}",
            "cfg": f"class{self.class_label}-cfg{self.cfg_weight:g}"}[self.kind]


def _class_label(value: Optional[Union[int, str]]) -> Optional[ClassLabel]:
  """``--class_label`` as a class index, ``'all'`` or None; one line for anything else."""
  if value is None or value == "all" or isinstance(value, int):
    return value
  if str(value).isdigit():
    return int(value)
  raise ValueError(f"--class_label={value!r}: give a class index (e.g. 3) or 'all'.")


def parse_task(config: Config, *, inpaint: Optional[str] = None, colorize: bool = False,
               class_label: Optional[Union[int, str]] = None,
               classifier_config: Optional[Config] = None,
               classifier_workdir: Optional[str] = None, guidance_scale: Optional[float] = None,
               cfg_weight: Optional[float] = None) -> Task:
  """The task the options ask for; a one-line ``ValueError`` for a combination that asks for
  none or several, a value out of range, or a task's missing input."""
  tasks = [name for name, given in (("--inpaint", inpaint is not None), ("--colorize", colorize),
                                    ("--class_label", class_label is not None)) if given]
  if len(tasks) != 1:
    raise ValueError(f"controlled sampling takes exactly one of --inpaint, --colorize and "
                     f"--class_label, got {', '.join(tasks) if tasks else 'none'}.")
  classifier_flags = [name for name, given in (
      ("--classifier_config", classifier_config is not None),
      ("--classifier_workdir", classifier_workdir),
      ("--guidance_scale", guidance_scale is not None)) if given]
  guidance_flags = classifier_flags + (["--cfg_weight"] if cfg_weight is not None else [])
  if tasks[0] != "--class_label":
    if guidance_flags:
      raise ValueError(f"{', '.join(guidance_flags)} only apply to guided sampling "
                       "(--class_label=K).")
    if inpaint is not None and inpaint not in controllable_generation.INPAINT_REGIONS:
      raise ValueError(f"--inpaint={inpaint!r}: choose one of "
                       f"{', '.join(controllable_generation.INPAINT_REGIONS)}.")
    return Task(kind=tasks[0][2:], inpaint=inpaint)
  label = _class_label(class_label)
  if guidance_scale is not None and guidance_scale < 0:
    raise ValueError(f"--guidance_scale must be >= 0, got {guidance_scale}.")
  if cfg_weight is not None and cfg_weight < 0:
    raise ValueError(f"--cfg_weight must be >= 0, got {cfg_weight}.")
  scale = 1.0 if guidance_scale is None else float(guidance_scale)
  weight = 0.0 if cfg_weight is None else float(cfg_weight)
  if classifier_flags:
    if cfg_weight is not None:
      raise ValueError("--cfg_weight (classifier-free guidance) and the classifier flags "
                       "(classifier guidance) exclude each other; give one of them.")
    if classifier_config is None or not classifier_workdir:
      raise ValueError("classifier guidance needs the classifier: --classifier_config=CONFIG (the "
                       "config it was trained with) and --classifier_workdir=W (its workdir).")
    return Task(kind="guidance", class_label=label, classifier_config=classifier_config,
                classifier_workdir=classifier_workdir, guidance_scale=scale)
  if not config.model.get("num_classes", 0):
    raise ValueError("--class_label needs a noise-conditional classifier (--classifier_config, "
                     "--classifier_workdir) or a class-conditional score model (trained with "
                     "--config.model.num_classes=K) for classifier-free guidance (--cfg_weight).")
  return Task(kind="cfg", class_label=label, cfg_weight=weight)


def sde_settings(config: Config) -> Dict[str, Any]:
  """What ``x(t)`` and the noise label depend on: ``training.sde``, the SDE's constructor fields
  of ``config.model`` except ``num_scales`` (a continuous-time model is used at any number of
  steps), ``data.centered`` and the data's shape."""
  sde_class = sde_lib.SDES.get(config.training.sde)
  fields = [name for name in inspect.signature(sde_class).parameters if name != "N"]
  return {"training.sde": str(config.training.sde).lower(),
          **{f"model.{name}": config.model.get(name) for name in fields},
          "data.centered": bool(config.data.centered),
          "shape": list(datasets.input_shape(config)[1:])}


def check_classifier_config(config: Config, classifier_config: Config) -> None:
  """Raises a one-line ``ValueError`` unless the classifier of ``classifier_config`` was trained on
  the ``x(t)`` the score model of ``config`` samples (same :func:`sde_settings`)."""
  ours, theirs = sde_settings(config), sde_settings(classifier_config)
  changed = [f"{name}: {theirs.get(name)!r} (classifier) vs {ours.get(name)!r} (score model)"
             for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name)]
  if changed:
    raise ValueError(f"the classifier config does not fit the score model: {'; '.join(changed)}; "
                     "train the classifier with the score model's SDE, data scaling and shape.")


def guidance_labels(class_label: ClassLabel, num_classes: int, n: int) -> np.ndarray:
  """``int32 [n]``: ``class_label`` for every sample, or with ``'all'`` the classes in turn
  (sample ``i`` of class ``i mod num_classes``); one-line ``ValueError`` for a class the model
  does not have."""
  if class_label == "all":
    return (np.arange(n) % num_classes).astype(np.int32)
  if not 0 <= int(class_label) < num_classes:
    raise ValueError(f"--class_label={class_label}: the model has classes 0...{num_classes - 1}.")
  return np.full((n,), int(class_label), np.int32)


def _side_by_side(*images: np.ndarray) -> np.ndarray:
  """``[N, H, W, C]`` images (each ``C`` 1 or the common count) as ``[N, H, k W, C]`` panels."""
  channels = max(image.shape[-1] for image in images)
  return np.concatenate([np.broadcast_to(image, image.shape[:-1] + (channels,))
                         for image in images], axis=2)


def _check_inputs(config: Config, task: Task, num_samples: int) -> None:
  """One-line ``ValueError`` s for what the task cannot run on, before anything is built."""
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  if task.guided:
    if task.kind == "guidance":
      check_classifier_config(config, task.classifier_config)
    return
  if datasets.is_vector_data(config):
    raise ValueError(f"--{task.kind} works on images; this config's data are vectors (data.dim "
                     f"= {config.data.dim}).")
  if str(config.sampling.method).lower() != "pc":
    what = {"inpaint": "Inpainting", "colorize": "Colorization"}[task.kind]
    raise ValueError(f"{what} runs the predictor-corrector sampler; set "
                     f"--config.sampling.method=pc (got {config.sampling.method!r}; any "
                     "predictor and corrector work).")
  channels = datasets.input_shape(config)[-1]
  if task.kind == "colorize" and channels < 2:
    raise ValueError(f"--colorize needs colour (RGB) images; this config's have {channels} "
                     "channel (data.num_channels).")


def controlled_sample(config: Config, workdir: str, *, inpaint: Optional[str] = None,
                      colorize: bool = False, class_label: Optional[Union[int, str]] = None,
                      classifier_config: Optional[Config] = None,
                      classifier_workdir: Optional[str] = None,
                      guidance_scale: Optional[float] = None, cfg_weight: Optional[float] = None,
                      checkpoint: Optional[str] = None, num_samples: int = 64,
                      folder: str = "sampled", allow_config_change: bool = False
                      ) -> Dict[str, Any]:
  """Inpainting, colorization or guided sampling with one checkpoint (EMA parameters).

  Exactly one task (:func:`parse_task`; one-line ``ValueError`` otherwise):

  * ``inpaint = region``: the first ``num_samples`` test images with ``region`` sampled by
    ``controllable_generation.get_pc_inpainter`` and the rest kept exactly; writes ``grid.png``
    (per image: the masked input, the mask -- white where known -- and the result) and
    ``sample.npz`` (``data``, ``mask``, ``samples``, ``labels``; data space).
  * ``colorize``: grey versions (channel mean) of the first ``num_samples`` test images
    coloured by ``get_pc_colorizer``; the result's channel mean is the input's (up to float
    rounding). RGB (``C >= 2``) image data only. ``grid.png``: grey input, result, original;
    ``sample.npz``: ``gray``, ``samples``, ``data``, ``labels``.
  * ``class_label = K`` (or ``'all'``: sample ``i`` of class ``i mod num_classes``),
    ``num_samples`` samples of class ``K``, by either

    - classifier guidance (``classifier_config`` and ``classifier_workdir`` given): the
      model's score (of a class-conditional model: its unconditional one) plus ``guidance_scale``
      (default 1: Bayes' rule) times the gradient of the noise-conditional classifier's
      ``log p_t(K | x)`` (its EMA parameters, :func:`modes.train_classifier.load_classifier`),
      which must have been trained on the score model's SDE, data scaling and image shape
      (:func:`check_classifier_config`); or
    - classifier-free guidance of a class-conditional model (``model.num_classes > 0``), weight
      ``cfg_weight`` (default 0: the conditional model as trained; ``builders.build_cfg_sampler``).

    ``grid.png``: the samples; ``sample.npz``: ``samples``, ``labels``. For MNIST the MNIST
    classifier reads every sample (``evaluation.scorers.build_class_predictor``; for the mixture
    toys the exact posterior): ``requested_class_rate``, the fraction it sees as the requested
    class, is in the result, ``sample.json`` and the console, and ``sample.npz`` has its
    ``predicted`` labels.

  Batches of ``eval.batch_size``, one compilation.

  Returns:
    ``{"step", "task", "num_samples", "nfe", "seconds", "path"}`` (and
    ``requested_class_rate`` where the classes were checked).
  """
  task = parse_task(config, inpaint=inpaint, colorize=colorize, class_label=class_label,
                    classifier_config=classifier_config, classifier_workdir=classifier_workdir,
                    guidance_scale=guidance_scale, cfg_weight=cfg_weight)
  _check_inputs(config, task, num_samples)
  if task.guided:
    classes = int((task.classifier_config if task.kind == "guidance" else config).model.num_classes)
    labels = guidance_labels(task.class_label, classes, num_samples)
  parameters.check_available(config, workdir, checkpoint, allow_config_change)
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  scaler, inverse_scaler = datasets.data_scalers(config)
  if task.kind == "guidance":
    classifier_model, classifier_params = train_classifier.load_classifier(
        task.classifier_config, task.classifier_workdir, allow_config_change)
  if task.guided:
    inputs = {"labels": labels}
    predict_class, unchecked = scorers.build_class_predictor(config)
  else:
    test = datasets.load_split(config, "test")
    if num_samples > len(test.labels):
      logging.warning("The test split has %d images: %s the first %d, not %d.", len(test.labels),
                      "inpainting" if task.kind == "inpaint" else "colorizing", len(test.labels),
                      num_samples)
      num_samples = len(test.labels)
    data = test.images[:num_samples].astype(np.float32) / 255.0
    inputs = {"data": data, "labels": test.labels[:num_samples].astype(np.int32)}
    if task.kind == "inpaint":
      mask = controllable_generation.inpainting_mask(task.inpaint, config.data.image_size)
      inputs["known"] = np.broadcast_to(mask, data.shape).astype(np.float32)
    else:
      inputs["gray"] = np.asarray(controllable_generation.to_gray(data))
  batch_size = devices.round_batch(min(config.eval.batch_size, num_samples))
  if task.kind == "inpaint":
    inpainter = builders.build_inpainter(config, sde, model, devices)
    run = lambda rng, params, b: inpainter(rng, params, devices.put_batch(scaler(b["data"])),
                                           devices.put_batch(b["known"]))
  elif task.kind == "colorize":
    colorizer = builders.build_colorizer(config, sde, model, devices)
    run = lambda rng, params, b: colorizer(rng, params, devices.put_batch(scaler(b["gray"])))
  elif task.kind == "guidance":
    guided_sampler = builders.build_guided_sampler(config, sde, model, devices, batch_size,
                                                   classifier_model)
    classifier_params = devices.put(classifier_params)
    scale = jnp.float32(task.guidance_scale)
    run = lambda rng, params, b: guided_sampler(rng, params, classifier_params,
                                                devices.put_batch(b["labels"]), scale)
  else:
    cfg_sampler = builders.build_cfg_sampler(config, sde, model, devices, batch_size)
    weight = jnp.float32(task.cfg_weight)
    run = lambda rng, params, b: cfg_sampler(rng, params, devices.put_batch(b["labels"]), weight)
  chosen = parameters.sampling_parameters(config, workdir, checkpoint, allow_config_change,
                                          model, template)
  label, tag = task.label, builders.sampler_tag(config)
  out_dir = os.path.join(workdir, folder, f"{chosen.folder}_{label}_{tag}")
  outputs.check_writable(out_dir)
  logging.info("%s: %d from %s with %s, batch %d.", label, num_samples, chosen.name, tag,
               batch_size)
  base = jax.random.PRNGKey(config.seed)
  rows = process_rows(batch_size)
  batches = list(batching.padded_batches(inputs, batch_size))
  drawn = sample.draw_in_batches(
      label, num_samples, batch_size,
      lambda k: run(jax.random.fold_in(base, k), chosen.params,
                    {name: array[rows] for name, array in batches[k].items()}),
      inverse_scaler)
  samples, seconds = drawn.samples, drawn.seconds
  if not np.all(np.isfinite(samples)):
    raise FloatingPointError(f"{label} from {chosen.name} with {tag} gave non-finite values; "
                             "nothing was saved.")
  result = {"step": chosen.step, "task": label, "num_samples": int(num_samples),
            "nfe": drawn.nfe, "seconds": seconds, "path": out_dir}
  vector = datasets.is_vector_data(config)
  picture = os.path.join(out_dir, "samples_vs_data.png" if vector else "grid.png")
  predicted = None
  if task.guided and predict_class is not None:
    predicted = predict_class(samples)
    result["requested_class_rate"] = float(np.mean(predicted == inputs["labels"][:num_samples]))
    logging.info("%s: %.1f %% of the samples are of the requested class (by %s).", label,
                 100 * result["requested_class_rate"],
                 "the exact posterior" if vector else "the MNIST classifier")
  elif task.guided:
    logging.info("%s: %s.", label, unchecked)
  if jax.process_index() == 0:
    if task.kind == "inpaint":
      arrays = {"data": inputs["data"], "mask": inputs["known"]}
      grid = _side_by_side(inputs["data"] * inputs["known"], inputs["known"], samples)
    elif task.kind == "colorize":
      arrays = {"gray": inputs["gray"], "data": inputs["data"]}
      grid = _side_by_side(inputs["gray"], samples, inputs["data"])
    else:
      arrays, grid = ({} if predicted is None else {"predicted": predicted}), samples
    outputs.save_npz(os.path.join(out_dir, "sample.npz"), samples=samples,
                     labels=inputs["labels"][:num_samples], **arrays)
    if vector:
      if figures.available():
        figures.toy_samples_vs_data(samples, sample.data_reference(config, max(num_samples, 2000)),
                                    picture, title=figures.run_title(chosen.title, label,
                                                                     result["nfe"]))
    elif task.class_label == "all":  # one class per column, as many rows as fit in 100 images
      outputs.save_image_grid(grid[:classes * max(1, 100 // classes)], picture, ncol=classes)
    else:
      outputs.save_image_grid(grid[:64], picture)
    settings = {**run_config.section(config, "sampling"), "task": label,
                "eval.batch_size": batch_size}
    if task.kind == "cfg":
      settings.update({"class_label": task.class_label, "cfg_weight": task.cfg_weight})
    elif task.kind == "guidance":
      settings.update({"class_label": task.class_label, "guidance_scale": task.guidance_scale,
                       "classifier_workdir": os.path.abspath(task.classifier_workdir),
                       **run_config.flatten(task.classifier_config.model.to_dict(),
                                            "classifier.model.")})
    outputs.save_json(os.path.join(out_dir, "sample.json"),
                      {**result, "checkpoint": None if chosen.step is None else chosen.name,
                       "settings": eval_cache.canonical(settings)})
  logging.info("%s: %d results, %.0f network evaluations each, in %.1f s (compiling included): "
               "%s", label, num_samples, result["nfe"], seconds, picture)
  return result


def run(config: Config, workdir: str, options: Options) -> Dict[str, Any]:
  """``--mode sample`` with ``--inpaint``, ``--colorize`` or ``--class_label`` (and the guidance
  flags), ``--checkpoint``, ``--num_samples``, ``--sample_folder``, ``--allow_config_change``."""
  return controlled_sample(
      config, workdir, inpaint=options.inpaint, colorize=options.colorize,
      class_label=options.class_label, classifier_config=options.classifier_config,
      classifier_workdir=options.classifier_workdir, guidance_scale=options.guidance_scale,
      cfg_weight=options.cfg_weight, checkpoint=options.checkpoint,
      num_samples=options.num_samples, folder=options.sample_folder,
      allow_config_change=options.allow_config_change)
