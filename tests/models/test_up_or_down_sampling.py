"""FIR resampling (``models.up_or_down_sampling``) against independent references: scipy's
upfirdn, full correlations, the nearest and box kernels, and the same ops in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from models import up_or_down_sampling as updown
from tests.models.fast_compile import BF16_U, fast_jit, normal

K1 = np.array([1.0, 3.0, 3.0, 1.0])


def scipy_fir(x, taps, up, down, start, length):
  """Separable reference: scipy's upfirdn (zero insertion, full convolution, decimation) along
  H then W of ``x: [B, H, W, C]``, keeping ``length`` outputs from index ``start``."""
  for axis in (1, 2):
    x = np.apply_along_axis(lambda v: scipy.signal.upfirdn(taps, v, up, down), axis, x)
    x = np.take(x, np.arange(start, start + length), axis=axis)
  return x


def test_fir_upsample_matches_scipy_upfirdn():
  x = np.random.RandomState(0).randn(2, 5, 5, 3)
  y = np.asarray(updown.upsample_2d(jnp.asarray(x, jnp.float32), K1, factor=2))
  # Per axis the filter is 2 K1 / sum(K1) (gain factor^2 split over two axes). StyleGAN2 pads
  # the zero-inserted signal by 2 in front, so output m is the full convolution at m + 1.
  ref = scipy_fir(x, 2 * K1 / K1.sum(), up=2, down=1, start=1, length=10)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_fir_downsample_matches_scipy_upfirdn():
  x = np.random.RandomState(1).randn(2, 8, 8, 3)
  y = np.asarray(updown.downsample_2d(jnp.asarray(x, jnp.float32), K1, factor=2))
  # Pads (1, 1): output i is the full convolution at 2 i + 2, i.e. decimated index i + 1.
  ref = scipy_fir(x, K1 / K1.sum(), up=1, down=2, start=1, length=4)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_default_fir_kernels_are_nearest_and_box():
  x = normal(0, (2, 6, 6, 4))
  nearest = np.repeat(np.repeat(np.asarray(x), 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(updown.upsample_2d(x), nearest, atol=1e-6)
  np.testing.assert_allclose(updown.naive_upsample_2d(x), nearest, atol=0)
  box = np.asarray(x).reshape(2, 3, 2, 3, 2, 4).mean(axis=(2, 4))
  np.testing.assert_allclose(updown.downsample_2d(x), box, atol=1e-6)
  np.testing.assert_allclose(updown.naive_downsample_2d(x), box, atol=1e-6)


def correlate_full(x, w):
  """``x: [B, H, W, C]``, ``w: [n, n, C, O]`` -> full 2-D correlation ``[B, H+n-1, W+n-1, O]``."""
  out = np.zeros((x.shape[0], x.shape[1] + w.shape[0] - 1, x.shape[2] + w.shape[1] - 1, w.shape[3]))
  for b in range(x.shape[0]):
    for c in range(x.shape[3]):
      for o in range(w.shape[3]):
        out[b, :, :, o] += scipy.signal.correlate2d(x[b, :, :, c], w[:, :, c, o], mode="full")
  return out


def test_fused_upsample_conv_matches_reference():
  rng = np.random.RandomState(2)
  x, w = rng.randn(2, 4, 4, 3), rng.randn(3, 3, 3, 5)
  y = np.asarray(updown.upsample_conv_2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                         K1))
  zero_inserted = np.zeros((2, 7, 7, 3))
  zero_inserted[:, ::2, ::2] = x
  full = correlate_full(zero_inserted, w)                      # [2, 9, 9, 5]
  # One FIR pass with pads (1, 1) over the 9 samples: output m is the full convolution at m + 2.
  ref = scipy_fir(full, 2 * K1 / K1.sum(), up=1, down=1, start=2, length=8)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
  # Away from the border it is a convolution of the FIR-upsampled image.
  unfused = jax.lax.conv_general_dilated(updown.upsample_2d(jnp.asarray(x, jnp.float32), K1),
                                         jnp.asarray(w, jnp.float32), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y[:, 3:-3, 3:-3], np.asarray(unfused)[:, 3:-3, 3:-3], rtol=1e-4,
                             atol=1e-4)


def test_fused_conv_downsample_matches_reference():
  rng = np.random.RandomState(3)
  x, w = rng.randn(2, 8, 8, 3), rng.randn(3, 3, 3, 5)
  y = np.asarray(updown.conv_downsample_2d(jnp.asarray(x, jnp.float32),
                                           jnp.asarray(w, jnp.float32), K1))
  # FIR with pads (2, 2) leaves 9 samples (full convolution at m + 1), then a stride-2 valid
  # correlation with w.
  filtered = scipy_fir(x, K1 / K1.sum(), up=1, down=1, start=1, length=9)
  ref = correlate_full(filtered, w)[:, 2:-2, 2:-2][:, ::2, ::2]
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_fir_ops_run_in_bfloat16():
  x = normal(0, (2, 8, 8, 4))
  w = normal(1, (3, 3, 4, 6)) / 6.0

  @fast_jit
  def all_ops(x, w):
    return (updown.upsample_2d(x, K1), updown.downsample_2d(x, K1),
            updown.upsample_conv_2d(x, w, K1), updown.conv_downsample_2d(x, w, K1))

  for ref, low in zip(all_ops(x, w), all_ops(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))):
    assert low.dtype == jnp.bfloat16 and low.shape == ref.shape
    # Inputs are rounded once (rel. error u/2 each) and the <= 9 * 4 * 16 products are summed
    # with bf16 or f32 accumulation; a relative RMS error of 8 u is a loose bound for this depth.
    rel = float(jnp.linalg.norm(low.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 8 * BF16_U
