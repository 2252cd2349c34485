"""The exact-score model (``model.name = 'exact_score'``, ``models/exact_score.py``): a
parameter-free model the builders plug in like a network, refused where there is nothing to
train or no closed form; its bits/dim are the true density's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
from configs.toy import gaussian_mixture, gaussian_mixture_exact
from datasets import toy_data
from infra.devices import Devices
from tests.oracles import TOY, full_covariance


def test_exact_score_is_a_parameter_free_model():
  config = gaussian_mixture_exact.get_config()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  assert builders.is_exact_score(model) and params == {}
  model, _, state = builders.init_state(config, Devices())  # the rest of the pipeline's state
  assert state.ema_params == {} and int(state.step) == 0
  assert "exact_score" in builders.mutils.MODELS.names()
  with pytest.raises(ValueError, match="no parameters to train"):
    builders.build_loss_fn(config, builders.build_sde(config), model, train=True)
  for dataset, source in [("swiss_roll", "toy"), ("CIFAR10", "tfds")]:
    other = gaussian_mixture.get_config()
    other.model.name, other.data.dataset, other.data.source = "exact_score", dataset, source
    with pytest.raises(ValueError, match=f"closed-form score, the toys gaussian_mixture .*"
                                         f"got data.dataset = '{dataset}'"):
      builders.init_model(jax.random.PRNGKey(0), other)


def test_bits_per_dim_of_the_exact_score_is_the_true_density():
  """``build_bpd_fn`` on the exact score: -log2 p_eps(x) / D of the closed form, up to the
  prior's mismatch with p_T (VP: a(T)^2 ~ 4e-5) and the solver (rtol = atol = 1e-5): within
  5e-4 bits/dim (measured 3e-5)."""
  config = gaussian_mixture_exact.get_config()
  sde, devices = builders.build_sde(config), Devices()
  model, params = builders.init_model(jax.random.PRNGKey(0), config)
  x = toy_data.sample_toy("gaussian_mixture", 16, seed=2)
  bpd, _ = builders.build_bpd_fn(config, sde, model, devices)(jax.random.PRNGKey(0), params,
                                                              devices.put_batch(x))
  eps = jnp.full((16,), 1e-5)  # likelihood's default start time
  exact = -full_covariance(TOY).marginal_log_prob(sde, jnp.asarray(x), eps) / (2 * np.log(2.0))
  np.testing.assert_allclose(bpd, exact, atol=5e-4)
