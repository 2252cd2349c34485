"""Training the noise-conditional classifier (``modes.train_classifier``, ``python -m
classifier_training``): a short CPU run on real MNIST must learn, and the trained classifier
guides through its log-probability function."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import pytest

import builders
import controllable_generation as cg
import datasets
import losses
from configs.classifier import vpsde_mnist_wrn
from models import classifier
from modes import train_classifier
from tests.conftest import MNIST_DIR


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
