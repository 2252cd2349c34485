"""Class-conditional score networks and classifier-free guidance through the whole pipeline:
NCSN++/DDPM++ conditioned on class labels (``model.num_classes``), labels through the loss, the
train step and its resume, label dropout, and ``--mode sample --class_label --cfg_weight``."""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import losses
import run_lib
import sde_lib
from configs import vpsde_mnist
from datasets import batching
from models import utils as mutils
from models.ncsnpp import NCSNpp
from tests.test_app import assert_states_close, final_state, run_main, toy_config

TINY = dict(nf=8, ch_mult=(1, 2), attn_resolutions=(), num_res_blocks=1, progressive_input="none",
            fir=False, resblock_type="ddpm", embedding_type="positional", dropout=0.0)


def _count(params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def _jittered(params, scale=0.05):
  """Random parameters (NCSN++ starts its output layer at zero, hiding every input)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [leaf + scale * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)])


# --------------------------------------------------------------------------- the network


def test_ncsnpp_class_embedding_adds_one_vector_per_class_and_the_null_label():
  x, t = jnp.ones((3, 8, 8, 1)), jnp.full((3,), 500.0)
  plain = NCSNpp(**TINY)
  plain_params = plain.init(jax.random.PRNGKey(0), x, t)["params"]
  model = NCSNpp(**TINY, num_classes=10)
  params = model.init(jax.random.PRNGKey(0), x, t)["params"]
  assert "ClassEmbedding_0" not in plain_params
  assert params["ClassEmbedding_0"]["embedding"].shape == (11, 4 * 8)  # 10 classes + null
  assert _count(params) - _count(plain_params) == 11 * 4 * 8
  params = _jittered(params)
  apply = jax.jit(lambda y: model.apply({"params": params}, x, t, class_labels=y))
  null = jax.jit(lambda: model.apply({"params": params}, x, t))()
  np.testing.assert_allclose(null, apply(jnp.full((3,), 10)), rtol=1e-6, atol=1e-6)
  per_class = [apply(jnp.full((3,), k)) for k in (0, 1)]
  assert float(jnp.abs(per_class[0] - per_class[1]).max()) > 1e-4
  # Each example is conditioned on its own label only.
  mixed = apply(jnp.array([0, 1, 0]))
  np.testing.assert_allclose(mixed[1], per_class[1][1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed[2], per_class[0][2], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unconditional network"):
    plain.apply({"params": plain_params}, x, t, class_labels=jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="set model.conditional = True"):
    NCSNpp(**TINY, num_classes=10, conditional=False)


def test_model_num_classes_builds_a_conditional_ddpmpp_and_is_refused_elsewhere():
  config = vpsde_mnist.get_config()
  config.model.update(nf=8, num_res_blocks=1, num_classes=10)
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  assert mutils.num_classes(model) == 10 and "ClassEmbedding_0" in params
  config.model.update(name="ddpm", nf=32)
  with pytest.raises(ValueError, match=re.escape("'ddpm' has no class conditioning; "
                                                 "class-conditional networks: ncsnpp, toy_mlp")):
    builders.build_model(config)


# --------------------------------------------------------------------------- the loss


def _conditional_setup(num_classes=4):
  config = toy_config(**{"model.num_classes": num_classes, "model.nf": 16})
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 2)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, num_classes, 16), jnp.int32)}
  return model, _jittered(params, 0.3), batch


def test_the_conditional_loss_is_dsm_of_the_conditional_score_and_drops_labels_only_in_training():
  sde = sde_lib.VPSDE()
  model, params, batch = _conditional_setup()
  rng = jax.random.PRNGKey(7)
  dropout_rng, noise_rng = jax.random.split(rng)
  for train in (False, True):
    # Without label dropout: DSM of score(x, t, y), with the keys of an unconditional loss.
    got = losses.get_loss_fn(sde, model, train=train, label_dropout=0.0)(params, rng, batch)
    score_fn = mutils.get_score_fn(sde, model, params, train=train, rng=dropout_rng,
                                   class_labels=batch["label"])
    np.testing.assert_allclose(got, losses.sde_loss(score_fn, sde, noise_rng, batch["image"]),
                               rtol=1e-6)
  dropping = losses.get_loss_fn(sde, model, train=True, label_dropout=0.5)
  assert float(dropping(params, rng, batch)) != pytest.approx(float(got), rel=1e-6)
  # The dropped labels are drop_labels' on the label-dropout key: the null label's score.
  dropped = losses.drop_labels(jax.random.fold_in(rng, 2), batch["label"], 0.5, 4)
  assert 0 < int(jnp.sum(dropped == 4)) < 16
  score_fn = mutils.get_score_fn(sde, model, params, train=True, rng=dropout_rng,
                                 class_labels=dropped)
  np.testing.assert_allclose(dropping(params, rng, batch),
                             losses.sde_loss(score_fn, sde, noise_rng, batch["image"]), rtol=1e-6)
  # Evaluation is the conditional loss whatever the dropout.
  np.testing.assert_allclose(
      losses.get_loss_fn(sde, model, train=False, label_dropout=0.5)(params, rng, batch),
      losses.get_loss_fn(sde, model, train=False)(params, rng, batch), rtol=1e-7)


def test_per_example_losses_of_labelled_batches_are_each_examples_own():
  sde = sde_lib.VPSDE(N=100)
  model, params, batch = _conditional_setup()
  for continuous in (True, False):
    loss_fn = losses.get_loss_fn(sde, model, train=False, continuous=continuous)
    rng = jax.random.PRNGKey(1)
    got = losses.per_example_losses(loss_fn, params, rng, batch)
    keys = jax.random.split(rng, 16)
    for b in (0, 5, 15):
      one = {"image": batch["image"][b:b + 1], "label": batch["label"][b:b + 1]}
      np.testing.assert_allclose(got[b], loss_fn(params, keys[b], one), rtol=1e-5)


def test_a_conditional_loss_refuses_unlabelled_batches_and_bad_dropout():
  sde = sde_lib.VPSDE()
  model, params, batch = _conditional_setup()
  with pytest.raises(TypeError, match="'label'"):
    losses.get_loss_fn(sde, model, train=True)(params, jax.random.PRNGKey(0), batch["image"])
  with pytest.raises(ValueError, match=re.escape("label_dropout must be in [0, 1)")):
    losses.get_loss_fn(sde, model, train=True, label_dropout=1.0)


def test_model_batch_gives_labels_to_conditional_networks_only():
  batch = {"image": np.full((4, 2), 0.5, np.float32), "label": np.array([1, 0, 2, -1]),
           "mask": np.array([1.0, 1.0, 1.0, 0.0])}
  np.testing.assert_array_equal(batching.model_batch(batch, lambda x: 2 * x), np.ones((4, 2)))
  got = batching.model_batch(batch, lambda x: x, num_classes=3)
  np.testing.assert_array_equal(got["label"], [1, 0, 2, 3])  # padding: the null label
  unlabelled = dict(batch, label=np.full(4, -1))
  with pytest.raises(ValueError, match="the data set has no labels") as error:
    batching.model_batch(unlabelled, lambda x: x, num_classes=3)
  assert "--config.model.num_classes=0" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match="the data have label 2"):
    batching.model_batch(batch, lambda x: x, num_classes=2)


# --------------------------------------------------------------------------- end to end

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
