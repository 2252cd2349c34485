"""The noise-conditional classifier (``models.classifier``): the authors' WRN-28-10 size, logits
for odd image sizes, and the noise label its log-probability function gives it under each SDE."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import datasets
import sde_lib
from configs.classifier import vesde_cifar10_wrn28_10, vpsde_mnist_wrn
from models import classifier


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
