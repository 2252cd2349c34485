"""The tutorial's ScoreNet (``models.tutorial_scorenet``): its parameter count against the
tutorial's PyTorch network, its spatial shapes, the fixed Fourier features, and the score it
gives through ``models.utils.get_score_fn`` (the output divided by the SDE's ``std(t)``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from models import tutorial_scorenet
from models import utils as mutils

KEY = jax.random.PRNGKey(0)
SHAPE = (2, 28, 28, 1)


def _tutorial_trainable_count(channels=(32, 64, 128, 256), embed_dim=256) -> int:
  """The trainable parameters of the tutorial's PyTorch ScoreNet, from its layer list: the
  embedding's Linear, bias-free 3 x 3 (transposed) convolutions but the last, which has a bias,
  a Linear (with bias) from the embedding and an affine GroupNorm at every other level. Its
  Fourier frequencies ``W`` (``embed_dim / 2 = 128``, ``requires_grad=False``) are excluded."""
  c1, c2, c3, c4 = channels
  conv = lambda cin, cout: 9 * cin * cout                   # noqa: E731
  dense = lambda cout: embed_dim * cout + cout              # noqa: E731
  norm = lambda cout: 2 * cout                              # noqa: E731
  count = embed_dim * embed_dim + embed_dim                 # embedding Linear
  for cin, cout in ((1, c1), (c1, c2), (c2, c3), (c3, c4),  # encoder
                    (c4, c3), (2 * c3, c2), (2 * c2, c1)):  # decoder with skip concatenations
    count += conv(cin, cout) + dense(cout) + norm(cout)
  return count + conv(2 * c1, 1) + 1                        # tconv1 and its bias


def _init(model, key=KEY):
  return jax.jit(model.init)(key, jnp.zeros(SHAPE), jnp.ones(SHAPE[:1]))["params"]


def test_parameter_count_is_the_tutorials():
  """1,115,297 trainable parameters, as the tutorial's PyTorch ScoreNet (channels 32, 64, 128,
  256; embedding 256); with its fixed Fourier ``W`` (128 values) it holds 1,115,425 tensors'
  entries. The Flax network stores no ``W`` (it is derived from ``fourier_seed``), so the count
  compared is the trainable one."""
  assert _tutorial_trainable_count() == 1_115_297
  model = tutorial_scorenet.TutorialScoreNet()
  variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros(SHAPE), jnp.ones(SHAPE[:1])))
  assert set(variables) == {"params"}
  assert mutils.parameter_count(variables["params"]) == 1_115_297
  convs = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
           if "Conv" in jax.tree_util.keystr(path)]
  assert sum(leaf.ndim == 1 for leaf in convs) == 1  # one bias, the last transposed conv's


def test_spatial_shapes_go_down_to_two_and_back_to_28():
  model = tutorial_scorenet.TutorialScoreNet()
  params = _init(model)
  _, state = model.apply({"params": params}, jnp.zeros(SHAPE), jnp.ones(SHAPE[:1]),
                         capture_intermediates=True)
  shapes = {name: value["__call__"][0].shape[1:3]
            for name, value in state["intermediates"].items() if "Conv" in name}
  assert [shapes[f"Conv_{i}"] for i in range(4)] == [(26, 26), (12, 12), (5, 5), (2, 2)]
  # Before the output padding of the second and third: 5, 11 (+1 = 12), 25 (+1 = 26), 28.
  assert [shapes[f"ConvTranspose_{i}"] for i in range(4)] == [(5, 5), (11, 11), (25, 25),
                                                               (28, 28)]
  with pytest.raises(ValueError, match="fit 28 x 28 images, got 32 x 32"):
    jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 32, 32, 1)), jnp.ones((1,))))


def test_fourier_features_are_fixed_by_the_seed_not_the_init_key():
  w = tutorial_scorenet.fourier_frequencies(256, 30.0, seed=0)
  assert w.shape == (128,) and 20.0 < w.std() < 40.0
  np.testing.assert_array_equal(w, tutorial_scorenet.fourier_frequencies(256, 30.0, seed=0))
  t = jnp.array([0.0, 0.25])
  features = tutorial_scorenet.gaussian_fourier_features(t, w)
  np.testing.assert_allclose(features[0], np.r_[np.zeros(128), np.ones(128)], atol=1e-6)
  np.testing.assert_allclose(features[1, :128], np.sin(2 * np.pi * 0.25 * w), atol=2e-4)

  model = tutorial_scorenet.TutorialScoreNet()
  params = _init(model)
  x, labels = jax.random.uniform(KEY, SHAPE), jnp.array([0.3, 0.7])
  out = model.apply({"params": params}, x, labels)
  other_seed = tutorial_scorenet.TutorialScoreNet(fourier_seed=1)
  assert not np.allclose(other_seed.apply({"params": params}, x, labels), out)
  np.testing.assert_array_equal(model.apply({"params": params}, x, labels), out)


def test_score_is_the_output_divided_by_the_sdes_std():
  """Through ``get_score_fn`` the score is ``out / std(t)`` with the tutorial's SDE (sigma^t,
  labels ``t`` itself): it scales as ``1 / std(t)`` at a fixed network output."""
  sde = sde_lib.SigmaPowerSDE(sigma=25.0)
  model = tutorial_scorenet.TutorialScoreNet()
  params = _init(model)
  x = jax.random.uniform(KEY, SHAPE)
  t = jnp.array([1e-3, 0.8])
  score = mutils.get_score_fn(sde, model, params)(x, t)
  out = model.apply({"params": params}, x, sde.noise_label(t))
  np.testing.assert_array_equal(sde.noise_label(t), t)
  std = np.sqrt((25.0 ** (2 * np.asarray(t)) - 1) / (2 * np.log(25.0)))
  np.testing.assert_allclose(score, np.asarray(out) / std[:, None, None, None], rtol=1e-5)
  # A network whose output does not depend on t: the score's ratio is std(0.8) / std(1e-3).
  constant = lambda x, labels: jnp.ones_like(x)  # noqa: E731
  ratio = mutils.score_fn_from_model_fn(sde, constant, True, scale_by_sigma=True)(x, t)
  np.testing.assert_allclose(ratio[0] / ratio[1], std[1] / std[0], rtol=1e-5)


def test_bad_options_fail_at_construction():
  with pytest.raises(ValueError, match="4 channel counts"):
    tutorial_scorenet.TutorialScoreNet(channels=(32, 64, 128))
  with pytest.raises(ValueError, match="divisible"):
    tutorial_scorenet.TutorialScoreNet(channels=(32, 48, 128, 256))
