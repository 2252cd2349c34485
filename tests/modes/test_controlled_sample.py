"""Controlled sampling (``modes.controlled_sample``) from the command line
(``run_lib.controlled_sample``, ``--mode sample --inpaint / --colorize / --class_label``):
inpainting keeps the known pixels of the test images, colorization keeps their grey, classifier
guidance runs from a classifier workdir and refuses a classifier trained on another SDE, and bad
flag combinations are refused in one line.

The score networks are tiny untrained NCSN++ checkpoints (the properties tested hold for any
score); the classifier is trained for two steps.

Class-conditional score models and classifier-free guidance end to end: the toy mixture trained
class-conditionally (its 8 components are the classes) resumes exactly, samples every class in
turn from the command line and with every sampling method, evaluates as an unconditional model;
guidance flags that do not fit are refused in one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import builders
import controllable_generation
import datasets
import run_lib
from configs import vesde_mnist, vpsde_mnist
from configs.classifier import vpsde_mnist_wrn
from evaluation import mnist_classifier
from infra import checkpoints
from infra import run_config
from infra.devices import Devices
from modes import train_classifier
from tests.conftest import MNIST_DIR
from tests.image_folders import folder_config, write_flat_folder
from tests.runs import (CONFIG, REPO, assert_states_close, dir_digest, final_state, main_env,
                        run_main, toy_config)

TINY_NETWORK = {"nf": 8, "ch_mult": (1,), "attn_resolutions": (), "num_res_blocks": 1,
                "num_scales": 5}


def _tiny(config, **sampling):
  config.model.update(TINY_NETWORK)
  config.eval.batch_size = 4
  config.eval.sample_metrics = "none"  # no MNIST classifier trained on first use
  config.sampling.update(sampling)
  return config


def _checkpointed(config, workdir, step=7):
  """``workdir`` holding random parameters of ``config``'s network as the step-``step``
  checkpoint and the config as the recorded one, as training would leave them.

  The initial parameters jittered: NCSN++ initialises its output layer to zero, and a zero score
  would give Langevin correction an infinite step.
  """
  _, _, state = builders.init_state(config, Devices())
  leaves, tree = jax.tree_util.tree_flatten(state.ema_params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  jittered = [leaf + 0.02 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]
  state = state.replace(ema_params=jax.tree_util.tree_unflatten(tree, jittered))
  with checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints")) as store:
    store.save(step, state)
  run_config.save(workdir, config)
  return workdir


def _mnist_config():
  if not os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"real MNIST IDX files not found in {MNIST_DIR}")
  config = _tiny(vesde_mnist.get_config())  # reverse diffusion + Langevin
  config.data.data_dir = MNIST_DIR
  return config


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
  config = _mnist_config()
  return config, _checkpointed(config, str(tmp_path_factory.mktemp("mnist")))


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
  """A WRN classifier of the score model's SDE (VE) trained for two steps on MNIST."""
  config = vpsde_mnist_wrn.get_config()
  config.training.sde = "vesde"
  config.model.update(sigma_min=0.01, sigma_max=20.0, embedding_type="fourier")
  config.data.update(data_dir=MNIST_DIR, centered=False)
  config.model.channel_multiplier = 1
  config.training.update(batch_size=8, n_iters=2, log_freq=1, snapshot_freq=2)
  config.optim.warmup = 0
  config.model.embedding_dim = 16
  config.eval.update(batch_size=8, classifier_times=(0.5,))
  workdir = str(tmp_path_factory.mktemp("classifier"))
  train_classifier.train(config, workdir)
  return config, workdir


def test_inpainting_keeps_the_known_half_of_the_test_images(mnist_run):
  config, workdir = mnist_run
  before = dir_digest(os.path.join(workdir, "checkpoints"))
  result = run_lib.controlled_sample(config, workdir, inpaint="left_half", num_samples=6)
  out = result["path"]
  assert out == os.path.join(workdir, "sampled",
                             "step_7_inpaint-left_half_pc-reverse_diffusion-langevin")
  test = datasets.load_split(config, "test").images[:6]
  with np.load(os.path.join(out, "sample.npz")) as saved:
    samples, mask = saved["samples"], saved["mask"]
    np.testing.assert_array_equal(saved["data"], test / np.float32(255.0))
  assert samples.shape == (6, 28, 28, 1) and mask.shape == samples.shape
  assert np.all(mask[:, :, :14] == 0) and np.all(mask[:, :, 14:] == 1)
  known = mask > 0
  # Exact in data space, up to the float rounding of the [-1, 1] scaling and back.
  np.testing.assert_array_equal(np.round(samples * 255.0)[known], test[known])
  assert np.abs(samples[~known] - test[~known] / 255.0).max() > 0.1  # the rest is sampled
  # 6 images in batches of 4 (the last one padded): 5 steps of predictor + corrector, + denoise.
  assert result["nfe"] == 5 * 2 + 1 and result["num_samples"] == 6
  info = json.loads(open(os.path.join(out, "sample.json")).read())
  assert info["step"] == 7 and info["settings"]["task"] == "inpaint-left_half"
  assert info["settings"]["sampling.corrector"] == "langevin" and info["nfe"] == 11
  with Image.open(os.path.join(out, "grid.png")) as grid:  # 3 x 2 panels of input, mask, result
    assert grid.size == (3 * (3 * 28 + 2) + 2, 2 * (28 + 2) + 2)
  assert dir_digest(os.path.join(workdir, "checkpoints")) == before


def test_inpainting_masks():
  for region, unknown in [("left_half", (slice(None), slice(0, 4))),
                          ("right_half", (slice(None), slice(4, 8))),
                          ("top_half", (slice(0, 4), slice(None))),
                          ("bottom_half", (slice(4, 8), slice(None))),
                          ("center", (slice(2, 6), slice(2, 6)))]:
    mask = controllable_generation.inpainting_mask(region, 8)
    expected = np.ones((8, 8, 1), np.float32)
    expected[unknown] = 0.0
    np.testing.assert_array_equal(mask, expected)


def test_colorization_keeps_the_grey_of_the_test_images(tmp_path):
  write_flat_folder(str(tmp_path / "images" / "train"), 2, size=(8, 8))
  test_pixels = write_flat_folder(str(tmp_path / "images" / "test"), 3, size=(8, 8))
  config = _tiny(folder_config(tmp_path / "images", image_size=8), method="pc",
                 predictor="euler_maruyama", corrector="none")
  workdir = _checkpointed(config, str(tmp_path / "run"))
  result = run_lib.controlled_sample(config, workdir, colorize=True, num_samples=5)
  assert result["num_samples"] == 3  # the test split's size
  assert result["path"].endswith("step_7_colorize_pc-euler_maruyama-none")
  with np.load(os.path.join(result["path"], "sample.npz")) as saved:
    samples, gray, data = saved["samples"], saved["gray"], saved["data"]
  originals = np.stack([test_pixels[name] for name in sorted(test_pixels)]) / np.float32(255.0)
  np.testing.assert_allclose(data, originals, atol=1e-6)
  np.testing.assert_allclose(gray, np.repeat(originals.mean(-1, keepdims=True), 3, -1), atol=1e-6)
  # The result's channel mean is the input's grey, up to the float rounding of the colour
  # transform and the [-1, 1] scaling (measured: 4e-6); its colour is sampled.
  np.testing.assert_allclose(samples.mean(-1), gray[..., 0], atol=1e-5)  # 1/400 of a level
  assert samples.std(-1).mean() > 0.01
  assert os.path.getsize(os.path.join(result["path"], "grid.png")) > 0


def test_classifier_guidance_from_a_classifier_workdir(mnist_run, classifier_run, tmp_path):
  config, workdir = mnist_run
  classifier_config, classifier_workdir = classifier_run
  # The samples' digits read by an MNIST classifier (here one trained for two steps).
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.update(sample_metrics="auto", mnist_classifier=str(tmp_path / "mnist.msgpack"))
  mnist_classifier.train_and_save(config.eval.mnist_classifier,
                                  lambda split: datasets.load_split(config, split), steps=2)
  result = run_lib.controlled_sample(config, workdir, class_label=3,
                                     classifier_config=classifier_config,
                                     classifier_workdir=classifier_workdir, guidance_scale=2.0,
                                     num_samples=4)
  assert result["path"].endswith("step_7_class3-scale2_pc-reverse_diffusion-langevin")
  with np.load(os.path.join(result["path"], "sample.npz")) as saved:
    assert saved["samples"].shape == (4, 28, 28, 1) and np.all(saved["labels"] == 3)
    assert np.all(np.isfinite(saved["samples"]))
    assert result["requested_class_rate"] == np.mean(saved["predicted"] == 3)
  info = json.loads(open(os.path.join(result["path"], "sample.json")).read())
  assert info["settings"]["guidance_scale"] == 2.0 and info["settings"]["class_label"] == 3
  assert info["nfe"] == 5 * 2 + 1
  assert os.path.getsize(os.path.join(result["path"], "grid.png")) > 0


def test_the_guidance_scale_adds_the_classifier_gradient(mnist_run, classifier_run):
  # The guided sampler is the plain one plus scale x the classifier's gradient: scale 0 gives the
  # unguided samples, a positive scale other ones (here with the probability-flow ODE).
  classifier_config, classifier_workdir = classifier_run
  config = ml_collections.ConfigDict(mnist_run[0].to_dict())
  config.sampling.update(method="ode", ode_solver="euler")
  devices = Devices()
  sde = builders.build_sde(config)
  model, _, state = builders.init_state(config, devices)
  classifier_model, classifier_params = train_classifier.load_classifier(
      classifier_config, classifier_workdir)
  rng, labels = jax.random.PRNGKey(1), jnp.full((2,), 5, jnp.int32)
  plain, plain_nfe = builders.build_sampler(config, sde, model, devices, 2, num_steps=3)(
      rng, state.ema_params)
  guided = builders.build_guided_sampler(config, sde, model, devices, 2, classifier_model,
                                         num_steps=3)
  unguided, nfe = guided(rng, state.ema_params, classifier_params, labels, jnp.float32(0.0))
  np.testing.assert_allclose(unguided, plain, atol=1e-5)
  assert nfe == plain_nfe == 3 + 1
  pushed, _ = guided(rng, state.ema_params, classifier_params, labels, jnp.float32(3.0))
  assert float(jnp.abs(pushed - plain).max()) > 1e-3


def test_a_classifier_of_another_sde_is_refused_in_one_line(mnist_run, classifier_run):
  config, workdir = mnist_run
  classifier_config, classifier_workdir = classifier_run
  for field, value, named in [("model.sigma_max", 50.0, "model.sigma_max"),
                              ("data.centered", True, "data.centered"),
                              ("data.image_size", 14, "shape"),
                              ("training.sde", "vpsde", "training.sde")]:
    other = ml_collections.ConfigDict(classifier_config.to_dict())
    section, name = field.split(".")
    other[section][name] = value
    with pytest.raises(ValueError, match="does not fit the score model") as error:
      run_lib.controlled_sample(config, workdir, class_label=1, classifier_config=other,
                                classifier_workdir=classifier_workdir)
    assert named in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match=re.escape("classes 0...9")):
    run_lib.controlled_sample(config, workdir, class_label=10,
                              classifier_config=classifier_config,
                              classifier_workdir=classifier_workdir)


def test_a_classifier_config_other_than_the_recorded_one_is_refused_in_one_line(
    mnist_run, classifier_run):
  config, workdir = mnist_run
  classifier_config, classifier_workdir = classifier_run
  assert run_config.load(classifier_workdir)["model.channel_multiplier"] == 1
  wider = ml_collections.ConfigDict(classifier_config.to_dict())
  wider.model.channel_multiplier = 2
  with pytest.raises(run_config.ConfigChangedError,
                     match=re.escape("model.channel_multiplier: 1 -> 2")) as error:
    run_lib.controlled_sample(config, workdir, class_label=1, classifier_config=wider,
                              classifier_workdir=classifier_workdir)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of --inpaint, --colorize and --class_label, got none"),
    (dict(inpaint="left_half", colorize=True), "got --inpaint, --colorize"),
    (dict(inpaint="left_half", guidance_scale=2.0), "--guidance_scale only apply to"),
    (dict(class_label=1), "--class_label needs a noise-conditional classifier"),
    (dict(inpaint="middle"), "--inpaint='middle': choose one of left_half"),
    (dict(colorize=True), "--colorize needs colour (RGB) images"),
    (dict(inpaint="left_half", num_samples=0), "--num_samples must be >= 1"),
])
def test_bad_requests_are_refused_in_one_line(tmp_path, kwargs, message):
  config = _tiny(vpsde_mnist.get_config())
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    run_lib.controlled_sample(config, str(tmp_path), **kwargs)
  assert "\n" not in str(error.value)


def test_replacement_needs_the_pc_sampler(tmp_path):
  config = _tiny(vesde_mnist.get_config(), method="ode")
  with pytest.raises(ValueError, match=re.escape("set --config.sampling.method=pc")):
    run_lib.controlled_sample(config, str(tmp_path), inpaint="center", num_samples=2)


def test_the_command_line_refuses_bad_combinations_in_one_line(tmp_path):
  for extra in (["--mode=sample", "--inpaint=left_half", "--colorize"],
                ["--mode=train", "--class_label=3"]):
    result = subprocess.run([sys.executable, "main.py", f"--config={CONFIG}",
                             f"--workdir={tmp_path}", *extra], cwd=REPO, env=main_env(1),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-2000:]


# ---------------------------------------------- class-conditional models, classifier-free guidance

CONDITIONAL = {"model.num_classes": 8, "training.label_dropout": 0.2}


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
  """The toy mixture (classes = its 8 components) trained class-conditionally on two devices."""
  workdir = str(tmp_path_factory.mktemp("conditional"))
  result = run_main(workdir, devices=2, **CONDITIONAL)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_a_conditional_run_resumes_exactly_and_matches_across_devices(tmp_path, conditional_run):
  workdir = str(tmp_path)
  first = run_main(workdir, **CONDITIONAL, **{"training.n_iters": 300})
  assert first.returncode == 0, first.stderr[-3000:]
  second = run_main(workdir, **CONDITIONAL)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resuming from step 300" in second.stderr
  config = toy_config(**CONDITIONAL)
  assert_states_close(final_state(workdir, config), final_state(conditional_run, config))


def test_classifier_free_guidance_from_the_command_line(conditional_run):
  """Samples of every class in turn, checked by the exact posterior over the mixture's
  components. Measured (600 steps, 200 Euler-Maruyama steps, 800 samples): 0.9975 at w = 0,
  1.000 at w = 1 and 3."""
  rates = {}
  for weight in (0, 3):
    result = run_main(conditional_run, mode="sample", **CONDITIONAL,
                      extra=["--class_label=all", f"--cfg_weight={weight}", "--num_samples=800"])
    assert result.returncode == 0, result.stderr[-3000:]
    folder = os.path.join(conditional_run, "sampled",
                          f"step_600_classall-cfg{weight}_pc-euler_maruyama-none")
    record = json.load(open(os.path.join(folder, "sample.json")))
    assert record["settings"]["cfg_weight"] == weight
    rates[weight] = record["requested_class_rate"]
    arrays = np.load(os.path.join(folder, "sample.npz"))
    np.testing.assert_array_equal(arrays["labels"], np.arange(800) % 8)
    assert np.mean(arrays["predicted"] == arrays["labels"]) == rates[weight]
    assert os.path.isfile(os.path.join(folder, "samples_vs_data.png"))
  assert rates[0] >= 0.95 and rates[3] >= 0.99, rates


def test_classifier_free_guidance_runs_every_sampling_method(conditional_run):
  """In-process, with the fast samplers: 20-step DPM-Solver and EDM's Heun at w = 1."""
  for method, tag in (("dpm_solver", "dpm_solver-2m-20steps"),
                      ("edm_heun", "edm_heun-churn0-20steps")):
    config = toy_config(**CONDITIONAL, **{"sampling.method": method})
    result = run_lib.controlled_sample(config, conditional_run, class_label=5, cfg_weight=1.0,
                                       num_samples=400)
    assert result["path"].endswith(f"step_600_class5-cfg1_{tag}")
    assert result["requested_class_rate"] >= 0.95, (method, result)


def test_a_conditional_model_evaluates_as_an_unconditional_one(conditional_run):
  """Eval's samples and bits/dim use the null label; its loss is the conditional one."""
  config = toy_config(**CONDITIONAL)
  config.eval.update(begin_ckpt=2, num_samples=1000, bpd_num_examples=500)
  final = run_lib.evaluate(config, conditional_run, "eval")["600"]
  assert np.isfinite(final["loss"]) and np.isfinite(final["bpd"])
  assert final["mmd"] < 0.5 * final["prior_mmd"], final


@pytest.mark.parametrize("flags, message", [
    (["--class_label=3"], "or a class-conditional score model"),
    (["--class_label=3", "--cfg_weight=1", "--config.model.num_classes=8",
      "--classifier_workdir=w"], "exclude each other"),
    (["--class_label=9", "--config.model.num_classes=8"], "classes 0...7"),
    (["--class_label=three", "--config.model.num_classes=8"], "give a class index"),
    (["--inpaint=left_half", "--cfg_weight=1"], "--cfg_weight only apply to guided sampling"),
])
def test_guidance_flags_are_refused_in_one_line(tmp_path, flags, message):
  result = run_main(str(tmp_path), mode="sample", extra=flags)
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
