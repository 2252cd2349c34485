"""NCSN++'s layers (``models.layerspp``): the Gaussian Fourier projection's frequencies are
fixed, not trained."""

import jax
import jax.numpy as jnp
import numpy as np

from models import layerspp


def test_fourier_frequencies_are_not_trained():
  proj = layerspp.GaussianFourierProjection(embedding_size=8, scale=16.0)
  t = jnp.array([0.3, 2.0])
  params = proj.init(jax.random.PRNGKey(0), t)["params"]
  assert float(jnp.std(params["W"])) > 4.0       # N(0, 16^2) draws, 8 of them
  grads = jax.grad(lambda p: jnp.sum(proj.apply({"params": p}, t)))(params)
  np.testing.assert_array_equal(grads["W"], 0.0)
