"""What a network predicts, and its conversion to a noise estimate, a score and a data estimate.

Every SDE here has the kernel ``x(t) = a(t) x0 + std(t) z``. A network's output ``out`` at
``(x, t)`` estimates one of these linear functions of ``(x0, z)``; given ``x`` each is an affine
function of the noise estimate ``z_hat = alpha out + beta x``, and that pair ``(alpha, beta)``
is all a prediction states. From it, written once here:

* the score ``-z_hat / std`` and the data estimate ``(x - std z_hat) / a``;
* the regression target, ``(z - beta x) / alpha``, the output that gives ``z_hat = z``;
* the weighting that makes the plain regression loss ``|out - target|^2`` a denoising score
  matching loss ``lambda(t) |score + z / std|^2``: ``lambda = std^2 / alpha^2``.

=============  =======================================  ==============================  ========
prediction     the network estimates                    ``(alpha, beta)``               lambda
=============  =======================================  ==============================  ========
``noise``      ``z``                                    ``(1, 0)``                      std^2
``score``      ``grad log p_t`` (``/ std`` if           ``(-std, 0)`` (``(-1, 0)``)     1 (std^2)
               ``scale_by_sigma``)
``data``       ``x0``                                   ``(-a / std, 1 / std)``         std^4/a^2
``velocity``   ``a' x0 + std' z`` (``z - x0`` on the    ``(a / d, -a' / d)``,           std^2 d^2
               linear path; primes are ``d / dt``)      ``d = a std' - std a'``         / a^2
``v``          ``a z - std x0`` (Salimans & Ho)         ``(a / n, std / n)``,           std^2 n^2
                                                        ``n = a^2 + std^2``             / a^2
=============  =======================================  ==============================  ========

So regressing the noise is DSM with the paper's ``std^2`` weighting, and flow matching on the
linear path (``a = 1 - t``, ``std = t``, ``d = 1``) is DSM weighted by ``t^2 / (1 - t)^2``. For
VP (``n = 1``) the v-loss is the noise loss weighted by ``1 + 1 / SNR``.
"""

from __future__ import annotations

import abc
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

import sde_lib
from infra.registry import Registry
from sde_lib import batch_mul

Array = jax.Array


class Coefficients(NamedTuple):
  """``a(t)``, ``std(t)`` and their time derivatives, each ``[B]``."""
  a: Array
  std: Array
  da: Array
  dstd: Array


def coefficients(sde: sde_lib.SDE, t: Array) -> Coefficients:
  """The kernel's coefficients at ``t: [B]``; the derivatives by forward-mode differentiation
  of ``sde.mean_coeff`` and ``sde.marginal_std``."""
  ones = jnp.ones_like(t)
  a, da = jax.jvp(sde.mean_coeff, (t,), (ones,))
  std, dstd = jax.jvp(sde.marginal_std, (t,), (ones,))
  return Coefficients(a, std, da, dstd)


class Prediction(abc.ABC):
  """A network's prediction target, stated by its ``(alpha, beta)`` (module docstring)."""
  needs_derivatives: bool = False

  @abc.abstractmethod
  def alpha_beta(self, c: Coefficients) -> Tuple[Array, Array]:
    """``(alpha, beta): [B]`` with ``z_hat = alpha out + beta x``."""

  def noise(self, out: Array, x: Array, c: Coefficients) -> Array:
    """The noise estimate ``z_hat: [B, ...]`` of the output ``out`` at ``x``."""
    alpha, beta = self.alpha_beta(c)
    return batch_mul(alpha, out) + batch_mul(beta, x)

  def score(self, out: Array, x: Array, c: Coefficients) -> Array:
    """``-z_hat / std``, ``[B, ...]``."""
    return batch_mul(-1.0 / c.std, self.noise(out, x, c))

  def data(self, out: Array, x: Array, c: Coefficients) -> Array:
    """The data estimate ``(x - std z_hat) / a``, ``[B, ...]``."""
    return batch_mul(1.0 / c.a, x - batch_mul(c.std, self.noise(out, x, c)))

  def target(self, x0: Array, z: Array, c: Coefficients) -> Array:
    """The output that is exact for ``x = a x0 + std z``: ``(z - beta x) / alpha``."""
    alpha, beta = self.alpha_beta(c)
    x = batch_mul(c.a, x0) + batch_mul(c.std, z)
    return batch_mul(1.0 / alpha, z - batch_mul(beta, x))

  def dsm_weight(self, c: Coefficients) -> Array:
    """``lambda(t) = std^2 / alpha^2``, ``[B]``: ``|out - target|^2 = lambda |score + z /
    std|^2``."""
    alpha, _ = self.alpha_beta(c)
    return c.std**2 / alpha**2


PREDICTIONS: Registry[Prediction] = Registry("prediction")
"""The predictions by name (``model.prediction``)."""


class Noise(Prediction):
  def alpha_beta(self, c):
    return jnp.ones_like(c.std), jnp.zeros_like(c.std)

  def score(self, out, x, c):
    return batch_mul(-1.0 / c.std, out)


class Score(Prediction):
  """The score itself, or divided by ``std`` (``scale_by_sigma``: the output is ``std`` times
  the score, of order one at every noise level)."""

  def __init__(self, scale_by_sigma: bool = False):
    self.scale_by_sigma = scale_by_sigma

  def alpha_beta(self, c):
    alpha = -jnp.ones_like(c.std) if self.scale_by_sigma else -c.std
    return alpha, jnp.zeros_like(c.std)

  def score(self, out, x, c):
    return batch_mul(1.0 / c.std, out) if self.scale_by_sigma else out


class Data(Prediction):
  def alpha_beta(self, c):
    return -c.a / c.std, 1.0 / c.std


class Velocity(Prediction):
  needs_derivatives = True

  def alpha_beta(self, c):
    d = c.a * c.dstd - c.std * c.da
    return c.a / d, -c.da / d


class V(Prediction):
  def alpha_beta(self, c):
    n = c.a**2 + c.std**2
    return c.a / n, c.std / n


for _name, _prediction in (("noise", Noise()), ("score", Score()), ("data", Data()),
                           ("velocity", Velocity()), ("v", V())):
  PREDICTIONS.add(_name, _prediction)


def get_prediction(name: str, scale_by_sigma: bool = False) -> Prediction:
  """The prediction ``name`` (case-insensitive); ``scale_by_sigma`` applies to ``'score'``."""
  prediction = PREDICTIONS.get(name)
  return Score(scale_by_sigma) if isinstance(prediction, Score) else prediction
