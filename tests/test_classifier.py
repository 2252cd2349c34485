"""Tests of the noise-conditional classifier (``models.classifier``) and its training
(``modes.train_classifier``): the authors' WRN-28-10 size, the noise label it is given, and a short
CPU run on real MNIST that must learn."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import controllable_generation as cg
import datasets
import losses
import sde_lib
from configs.classifier import vesde_cifar10_wrn28_10, vpsde_mnist_wrn
from models import classifier
from modes import train_classifier
from tests.conftest import MNIST_DIR


def _parameter_count(config) -> int:
  model = builders.build_model(config)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros(datasets.input_shape(config)), jnp.ones((1,))))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


def test_wrn_28_10_has_the_authors_parameter_count():
  # 38,913,242: the count of the authors' own flax WideResnet(blocks_per_group=4,
  # channel_multiplier=10, num_outputs=10) on 32x32x3, built from their module.
  config = vesde_cifar10_wrn28_10.get_config()
  assert isinstance(builders.build_model(config), classifier.WideResNet)
  assert _parameter_count(config) == 38_913_242
  assert _parameter_count(vpsde_mnist_wrn.get_config()) == 736_282


def test_classifier_outputs_logits_for_odd_sizes():
  model = classifier.WideResNet(num_classes=7, blocks_per_group=1, channel_multiplier=1,
                                embedding_type="positional")
  x = jnp.ones((2, 14, 14, 1))                               # 14 -> 7 -> 4 (odd halving)

  @jax.jit
  def logits_of(x, labels):
    return model.apply(model.init(jax.random.PRNGKey(0), x, labels), x, labels)

  logits = logits_of(x, jnp.array([1.0, 500.0]))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert float(jnp.abs(logits[0] - logits[1]).max()) > 0       # the noise label matters


class _EchoLabels(nn.Module):
  """Logits ``[noise label, 0]``: shows what the classifier is given."""

  @nn.compact
  def __call__(self, x, labels, train=False):
    return jnp.stack([labels, jnp.zeros_like(labels)], axis=-1)


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.subVPSDE()],
                         ids=["ve", "vp", "subvp"])
def test_log_prob_fn_gives_the_classifier_the_sdes_noise_label(sde):
  t = jnp.array([0.01, 0.3, 0.9])
  log_prob_fn = classifier.get_log_prob_fn(sde, _EchoLabels(), {})
  expected = jax.nn.log_softmax(jnp.stack([sde.noise_label(t), jnp.zeros(3)], -1), axis=-1)
  np.testing.assert_allclose(log_prob_fn(jnp.zeros((3, 4, 4, 1)), t), expected, rtol=1e-6)


def test_the_training_objective_perturbs_with_the_sde():
  sde = sde_lib.VPSDE()
  x = jnp.ones((4096, 2))
  t = jnp.full((4096,), 0.4)
  x_t = losses.perturb(sde, jax.random.PRNGKey(0), x, t)
  a, std = float(sde.mean_coeff(t)[0]), float(sde.marginal_std(t)[0])
  np.testing.assert_allclose(x_t.mean(0), a, atol=4 * std / 64)
  np.testing.assert_allclose(x_t.std(0), std, rtol=0.05)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny WRN trained for 300 steps on 14x14 MNIST under VP, through ``train`` (~20 s)."""
  if not os.path.isfile(os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")):
    pytest.skip(f"real MNIST IDX files not found in {MNIST_DIR}")
  config = vpsde_mnist_wrn.get_config()
  config.data.data_dir = MNIST_DIR
  config.data.image_size = 14
  config.model.channel_multiplier = 1
  config.model.ema_rate = 0.9
  config.training.batch_size = 64
  config.training.n_iters = 300
  config.training.log_freq = 100
  config.training.snapshot_freq = 300
  config.optim.lr = 1e-3
  config.optim.warmup = 0
  config.eval.batch_size = 500
  config.eval.classifier_times = (0.05, 0.95)
  workdir = str(tmp_path_factory.mktemp("classifier"))
  return config, workdir, train_classifier.train(config, workdir)


def test_short_training_learns_on_mildly_noisy_mnist(trained):
  # Measured (2-core CPU, this fixture): test accuracy 0.77 at t = 0.05, 0.11 at t = 0.95 (VP:
  # a = 0.0025 of the signal left, nothing to tell apart); chance is 0.1.
  config, workdir, report = trained
  assert report["step"] == 300 and report["num_test_examples"] == 500
  accuracy_mild, accuracy_noise = report["test_accuracy"]
  assert accuracy_mild > 0.4
  assert accuracy_noise < 0.25
  with open(os.path.join(workdir, "classifier_eval.json")) as f:
    assert json.load(f) == report


def test_the_trained_classifier_guides_through_its_log_prob_fn(trained):
  config, workdir, report = trained
  model, params = train_classifier.load_classifier(config, workdir)
  sde = builders.build_sde(config)
  log_prob_fn = classifier.get_log_prob_fn(sde, model, params)
  test = datasets.load_split(config, "test")
  x = jnp.asarray(test.images[:500], jnp.float32) / 127.5 - 1.0
  labels = jnp.asarray(test.labels[:500])
  t = jnp.full((500,), 0.05)
  x_t = losses.perturb(sde, jax.random.PRNGKey(config.seed), x, t)
  guidance = cg.classifier_guided_score(lambda x, t: jnp.zeros_like(x), log_prob_fn, labels)

  @jax.jit
  def check(x_t):
    # The guidance term pushes towards the requested class: a small step along it raises
    # log p_t(y | x) of every example.
    log_probs = log_prob_fn(x_t, t)
    stepped = log_prob_fn(x_t + 1e-3 * guidance(x_t, t), t)
    gain = jnp.take_along_axis(stepped - log_probs, labels[:, None], -1)[:, 0]
    return jnp.mean(jnp.argmax(log_probs, -1) == labels), gain

  accuracy, gain = check(x_t)
  assert abs(float(accuracy) - report["test_accuracy"][0]) < 0.08
  assert float(jnp.mean(gain > 0)) > 0.99
