"""Command line: ``python main.py --config CONFIG --mode MODE [--workdir W] [--config.a.b=v]``.

Modes (``run_lib.MODES``, one module each in ``modes/``): ``train`` trains (or resumes), ``eval``
evaluates the checkpoints it wrote, ``sample`` draws ``--num_samples`` samples from the newest
(or ``--checkpoint``) -- or with ``--inpaint=REGION``, ``--colorize`` or ``--class_label=K``
inpaints or colours test images or draws samples of class ``K``, guided by a classifier
(``--classifier_config``, ``--classifier_workdir``, ``--guidance_scale``) or, for a
class-conditional model, classifier-free (``--cfg_weight``) --, ``figures`` draws the process,
``fid_stats`` computes the training split's FID reference statistics once,
``train_classifier`` trains the noise-conditional classifier of classifier guidance,
``reflow`` trains a second flow on the couplings of the trained one (in ``<workdir>/reflow``),
and ``train_dequantizer`` the variational dequantizer of the trained model's bits/dim (in
``<workdir>/dequantizer``). They pair up on the same workdir, by default ``runs/<config path
under configs/>`` (``configs/vpsde_mnist.py`` -> ``runs/vpsde_mnist``). Config fields can be
overridden, e.g. ``--config.training.batch_size=64``.

A single process uses all of its local devices. ``--multihost`` runs it as one of several
processes (:mod:`infra.distributed`): give every process ``--coordinator_address=host:port
--num_processes=N --process_id=i`` (or the environment variables ``SCORE_SDE_COORDINATOR_ADDRESS``,
``SCORE_SDE_NUM_PROCESSES``, ``SCORE_SDE_PROCESS_ID``), or launch them under a cluster manager
JAX detects (SLURM, Open MPI, Cloud TPU, ...); any of those settings implies ``--multihost``.

This module only parses the command line: the flags become a ``modes.Options``,
``run_lib.check`` checks that they fit the mode, and the mode's entry of ``run_lib.MODES`` runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings

from absl import app, flags
from ml_collections import config_flags

import configs
import controllable_generation
import run_lib
from infra import compilation_cache
from infra import cpu_runtime
from infra import distributed
from infra import logs
from infra.commands import one_line_errors
from modes import Options

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "Training/evaluation config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None,
                    "Directory for checkpoints, samples and logs; default: runs/<the config's "
                    "path under configs/, without .py> (runs/<file name> for other configs).")
flags.DEFINE_enum("mode", None, list(run_lib.MODES),
                  "train (or resume), eval (the checkpoints training wrote), sample (from one "
                  "checkpoint), figures (pictures of the process for one checkpoint), "
                  "fid_stats (the training split's FID reference statistics, once), "
                  "train_classifier (the noise-conditional classifier of classifier guidance), "
                  "reflow (a second flow trained on the trained one's couplings, in "
                  "<workdir>/reflow), or train_dequantizer (the variational dequantizer of "
                  "the trained model's bits/dim, in <workdir>/dequantizer).")
flags.DEFINE_string("eval_folder", "eval", "Folder under workdir for evaluation outputs.")
flags.DEFINE_string("checkpoint", None,
                    "--mode sample, figures and reflow: the checkpoint, as a step number or the "
                    "path of "
                    "a step directory (<workdir>/checkpoints/<step>); default: the newest. "
                    "--mode sample, figures and eval: or one of the authors' released files "
                    "(checkpoint_<k> Flax msgpack, checkpoint_<k>.pth PyTorch).")
flags.DEFINE_integer("num_samples", 64, "--mode sample: how many samples to draw.")
flags.DEFINE_integer("num_frames", 40,
                     "--mode sample and figures: frames of the reverse-process animations "
                     "(0: none; the sampler keeps num_frames x batch states).")
flags.DEFINE_string("sample_folder", "sampled",
                    "--mode sample: folder under workdir for the samples.")
flags.DEFINE_bool("multihost", False,
                  "Run as one of several processes over one device mesh; where this process "
                  "belongs comes from the next three flags, their environment variables, or a "
                  "detected cluster manager (SLURM, Open MPI, Cloud TPU, ...).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 (it serves there) for --multihost; default: "
                    "$SCORE_SDE_COORDINATOR_ADDRESS. Implies --multihost.")
flags.DEFINE_integer("num_processes", None,
                     "Number of processes for --multihost; default: $SCORE_SDE_NUM_PROCESSES. "
                     "Implies --multihost.")
flags.DEFINE_integer("process_id", None,
                     "This process's index in [0, num_processes) for --multihost; default: "
                     "$SCORE_SDE_PROCESS_ID. Implies --multihost.")
flags.DEFINE_integer("peer_timeout_s", 60,
                     "--multihost: a process silent for this long counts as dead and the run "
                     "stops; an exiting process waits at most half this long for the others.")
flags.DEFINE_integer("init_timeout_s", 300,
                     "--multihost: how long to wait for every process to join the run.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume (or evaluate) although fields that define the trained model differ "
                  "from the workdir's recorded config.json; the new config is recorded.")
flags.DEFINE_enum("inpaint", None, list(controllable_generation.INPAINT_REGIONS),
                  "--mode sample: inpaint this region of the first --num_samples test images "
                  "(the rest is kept) instead of sampling; writes input, mask and result.")
flags.DEFINE_bool("colorize", False,
                  "--mode sample: colour grey versions of the first --num_samples test images "
                  "(RGB data); writes grey input, result and original.")
flags.DEFINE_string("class_label", None,
                    "--mode sample: draw samples of this class ('all': every class in turn), "
                    "guided by the noise-conditional classifier of --classifier_config in "
                    "--classifier_workdir, or by classifier-free guidance of a class-conditional "
                    "model (model.num_classes > 0).")
config_flags.DEFINE_config_file("classifier_config", None,
                                "--class_label: the config the classifier was trained with "
                                "(--mode train_classifier); overrides as for --config.",
                                lock_config=True)
flags.DEFINE_string("classifier_workdir", None,
                    "--class_label: the classifier's workdir (its newest checkpoint, EMA).")
flags.DEFINE_float("guidance_scale", None,
                   "--class_label: scale of the classifier's gradient (default 1, Bayes' rule; "
                   "larger sharpens).")
flags.DEFINE_float("cfg_weight", None,
                   "--class_label with a class-conditional model: classifier-free guidance "
                   "weight w, (1 + w) s(x, t, y) - w s(x, t) (default 0, the conditional model; "
                   "larger sharpens).")
flags.DEFINE_string("compilation_cache", "",
                    "Folder of JAX's persistent compilation cache, which lets a second run of a "
                    "command skip compiling; default: $SCORE_SDE_COMPILATION_CACHE or "
                    "~/.cache/score_sde_jax/jax; 'none': off.")
flags.mark_flags_as_required(["mode"])

def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])!r}; flags take the form "
             "--name=value (see --help)")
  logs.configure_console()
  # Before JAX's first computation: XLA reads its flags, and starts its threads, then.
  cpu_runtime.configure()
  options = Options(**{field.name: FLAGS[field.name].value
                       for field in dataclasses.fields(Options)
                       if field.name != "classifier_config"},
                    classifier_config=_classifier_config())
  try:
    run_lib.check(FLAGS.mode, options)
  except ValueError as e:
    sys.exit(f"error: {e}")
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
  multi_process = distributed.requested(FLAGS.multihost, FLAGS.coordinator_address,
                                        FLAGS.num_processes, FLAGS.process_id)
  try:
    # A user's mistake (infra.commands.USER_ERRORS: a setting, a path, a full disk, diverging
    # training, an unreadable checkpoint) ends in one line.
    with one_line_errors():
      if multi_process:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               peer_timeout_s=FLAGS.peer_timeout_s,
                               init_timeout_s=FLAGS.init_timeout_s)
      logging.info("Workdir: %s%s", workdir,
                   "" if FLAGS.workdir else " (this config's default; --workdir sets another)")
      compilation_cache.configure(FLAGS.compilation_cache)
      run_lib.MODES[FLAGS.mode](FLAGS.config, workdir, options)
  except RuntimeError as e:
    if not multi_process:
      raise
    # A collective failed because another process died: say so instead of XLA's traceback.
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    sys.exit(f"error: a collective with the other processes failed ({first}); if one of them "
             "died, start every process again with the same command to resume.")


def _classifier_config():
  """``--classifier_config`` loaded (None if not given); a file that fails to load exits with one
  line (config_flags defers that failure to the config's first use)."""
  if FLAGS.classifier_config is None:
    return None
  try:
    FLAGS.classifier_config.to_dict()
  except Exception as e:  # pylint: disable=broad-except
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    path = config_flags.get_config_filename(FLAGS["classifier_config"])
    sys.exit(f"error: cannot load --classifier_config {path!r}: "
             f"{lines[-1] if lines else type(e).__name__}")
  return FLAGS.classifier_config


def default_workdir(config_path: str) -> str:
  """``runs/<config_path under configs/, without .py>``; ``runs/<file stem>`` for a config file
  elsewhere. Relative to the working directory, so the train, eval and sample commands pair up
  when run from the same place."""
  stem = os.path.splitext(os.path.normpath(config_path))[0]
  parts = stem.split(os.sep)
  below = [i for i, part in enumerate(parts[:-1]) if part == "configs"]
  return os.path.join("runs", *parts[below[-1] + 1:] if below else parts[-1:])


def _parse_flags(argv):
  """absl's flag parsing, with every way of passing a bad config reported in one line."""
  try:
    remaining = FLAGS(argv)
    # A file that fails to load becomes a stand-in raising on first use: use it now.
    config = FLAGS.config
    if config is not None:
      config.to_dict()
  except flags.Error as e:
    if "config file" in str(e):  # config_flags wraps a failed load in a flags error
      sys.exit(f"error: {_config_error(argv, e)}")
    sys.exit(f"error: {str(e).strip().splitlines()[0]}")
  except Exception as e:  # pylint: disable=broad-except
    # config_flags loads the file and applies ``--config.a.b=v`` while parsing.
    sys.exit(f"error: {_config_error(argv, e)}")
  if config is None:
    sys.exit("error: --config is required, e.g. --config configs/toy/gaussian_mixture.py")
  return remaining


# The flags that take a config file and its ``--<flag>.a.b=v`` overrides.
_CONFIG_FLAGS = ("config", "classifier_config")


def _config_error(argv, error: Exception) -> str:
  """What went wrong loading ``--config`` (or ``--classifier_config``) or applying an override to
  it, in one line."""
  for flag in _CONFIG_FLAGS:
    path = _flag_value(argv, flag)
    if not path:
      continue
    try:
      config = configs.load_config(path)
    except Exception as e:  # pylint: disable=broad-except
      return (f"cannot load config {path!r}: {type(e).__name__}: {str(e).rstrip('.')}. Pass a "
              "config file that defines get_config(), e.g. --config configs/vpsde_mnist.py")
    for arg in argv[1:]:
      if not arg.startswith(f"--{flag}."):
        continue
      key = arg[len(f"--{flag}."):].partition("=")[0]
      node, parts = config, key.split(".")
      for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
          where = ".".join(parts[:i]) or "the config"
          known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
          return f"--{flag}.{key}: {where} has no field {part!r} (its fields: {known})."
        node = node[part]
  return f"bad --config override: {type(error).__name__}: {error}"


def _flag_value(argv, flag: str) -> str:
  """The value of ``--<flag>`` in ``argv`` (``--flag=VALUE`` or ``--flag VALUE``), or ""."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      return arg.split("=", 1)[1]
    if arg == f"--{flag}" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def run() -> None:
  # A checkpoint write that failed (full disk) leaves orbax's abandoned write coroutines behind;
  # at exit Python would print a warning about each of them after the one-line error.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # before training's own handler is installed, or after
    sys.exit("error: interrupted; what was saved is kept: rerun the same command to resume.")


if __name__ == "__main__":
  run()
