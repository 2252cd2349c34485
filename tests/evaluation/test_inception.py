"""Tests of ``evaluation.inception`` (and its command, ``python -m inception``) with random
weights (no download): the network's structure against the ``inception-2015-12-05`` graph as
pytorch-fid builds it, loading pytorch-fid's state-dict names, the .npz converter, the resize,
and finite features end to end."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inception as inception_command
from evaluation import inception
from infra.devices import Devices
from models import utils as mutils
from tests.inception_weights import random_state_dict

# Counted from pytorch-fid's FID Inception module (BatchNorm running statistics excluded).
PYTORCH_FID_PARAMETERS = 23_850_960
# A few of pytorch-fid's state-dict entries, written out by hand from its module.
KNOWN_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.weight": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.running_mean": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
# Output shapes of the graph's layers at 299x299 (batch 1).
LAYER_SHAPES = {
    "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32),
    "Conv2d_2b_3x3": (147, 147, 64), "Conv2d_3b_1x1": (73, 73, 80),
    "Conv2d_4a_3x3": (71, 71, 192), "Mixed_5b": (35, 35, 256), "Mixed_5c": (35, 35, 288),
    "Mixed_5d": (35, 35, 288), "Mixed_6a": (17, 17, 768), "Mixed_6b": (17, 17, 768),
    "Mixed_6e": (17, 17, 768), "Mixed_7a": (8, 8, 1280), "Mixed_7b": (8, 8, 2048),
    "Mixed_7c": (8, 8, 2048),
}


@pytest.fixture(scope="module")
def state_dict():
  return random_state_dict()


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception.params_from_state_dict(state_dict)


def test_parameter_count_and_layer_shapes_are_the_graphs():
  abstract = inception._abstract_variables()  # pylint: disable=protected-access
  assert mutils.parameter_count(abstract["params"]) == PYTORCH_FID_PARAMETERS

  def forward(v, x):
    return inception.InceptionV3().apply(v, x, capture_intermediates=True,
                                         mutable=["intermediates"])

  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  (pool_3, logits), state = jax.eval_shape(forward, abstract, x)
  assert pool_3.shape == (1, 2048) and logits.shape == (1, 1008)
  layers = state["intermediates"]
  for name, shape in LAYER_SHAPES.items():
    assert layers[name]["__call__"][0].shape == (1,) + shape, name


def test_state_dict_keys_are_pytorch_fids():
  shapes = inception.state_dict_shapes()
  # 94 convolutions with a BatchNorm each (conv weight, bn weight/bias/running_mean/running_var)
  # and the fc layer's weight and bias; no auxiliary head.
  assert len(shapes) == 94 * 5 + 2
  assert not any(name.startswith("AuxLogits") for name in shapes)
  for name, shape in KNOWN_SHAPES.items():
    assert shapes[name] == shape, name


def test_params_from_state_dict_converts_layouts(state_dict, variables):
  params, stats = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(params["Conv2d_1a_3x3"]["conv"]["kernel"],
                                state_dict["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["bn"]["scale"],
                                state_dict["Mixed_6b.branch7x7_2.bn.weight"])
  np.testing.assert_array_equal(stats["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])


def test_a_loaded_1x7_convolution_computes_torchs_convolution():
  # torch's Conv2d on NCHW, OIHW weights, padding (0, 3), then BatchNorm and ReLU, by hand: the
  # layout conversion must not swap the kernel's rows and columns.
  rng = np.random.default_rng(1)
  weight = rng.normal(size=(4, 3, 1, 7)).astype(np.float32)
  mean, var = rng.normal(size=4), rng.uniform(0.5, 2.0, 4)
  gamma, beta = rng.normal(size=4), rng.normal(size=4)
  x = rng.normal(size=(1, 3, 5, 6))
  padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (3, 3)))
  conv = np.zeros((1, 4, 5, 6))
  for o in range(4):
    for i in range(5):
      for j in range(6):
        conv[0, o, i, j] = np.sum(padded[0, :, i:i + 1, j:j + 7] * weight[o])
  expected = np.maximum((conv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) *
                        gamma[:, None, None] + beta[:, None, None], 0.0)
  layer = inception.BasicConv(4, (1, 7), padding=(0, 3))
  variables = {"params": {"conv": {"kernel": weight.transpose(2, 3, 1, 0)},
                          "bn": {"scale": gamma, "bias": beta}},
               "batch_stats": {"bn": {"mean": mean, "var": var}}}
  out = layer.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, atol=1e-5)


def test_pools_ignore_padding():
  # pylint: disable=protected-access
  x = jnp.asarray(-np.arange(1.0, 17.0).reshape(1, 4, 4, 1))
  # The average at a corner is over the 4 pixels inside, the max over them too (not a 0 pad).
  avg = np.asarray(inception._avg_pool_3x3(x))
  maxed = np.asarray(inception._max_pool_3x3(x, 1, 1))
  assert avg.shape == maxed.shape == x.shape
  assert avg[0, 0, 0, 0] == pytest.approx(-(1 + 2 + 5 + 6) / 4)
  assert avg[0, 1, 1, 0] == pytest.approx(-(1 + 2 + 3 + 5 + 6 + 7 + 9 + 10 + 11) / 9)
  assert maxed[0, 0, 0, 0] == -1.0 and maxed[0, 3, 3, 0] == -11.0


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("Mixed_6c.branch7x7_3.bn.running_mean"),
     "missing key 'Mixed_6c.branch7x7_3.bn.running_mean'"),
    (lambda sd: sd.update({"AuxLogits.fc.weight": np.zeros((1000, 768))}),
     "unexpected key 'AuxLogits.fc.weight'"),
    (lambda sd: sd.update({"fc.weight": np.zeros((1000, 2048))}),
     r"'fc.weight' has shape \(1000, 2048\), expected \(1008, 2048\)"),
])
def test_a_wrong_state_dict_is_named_in_one_line(state_dict, change, message):
  broken = dict(state_dict)
  change(broken)
  with pytest.raises(ValueError, match=message) as error:
    inception.params_from_state_dict(broken)
  assert "\n" not in str(error.value)


def test_npz_round_trip_and_converter_without_torch(tmp_path, state_dict, variables):
  first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  inception.save_state_dict(first, state_dict)
  # The converter reads any state dict it can load; here the .npz just written.
  assert inception_command.main(["--convert", first, "--out", second]) == second
  with np.load(second) as saved:
    assert set(saved.files) == set(inception.state_dict_shapes())
  loaded = inception.load_inception(second)
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, variables)


def test_reading_a_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError) as error:
    inception.load_inception(str(path))
  message = str(error.value)
  assert "pip install torch" in message and "python -m inception --convert" in message
  assert "\n" not in message


def test_missing_or_unknown_weight_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="no Inception weights at"):
    inception.load_inception(str(tmp_path / "absent.npz"))
  other = tmp_path / "weights.bin"
  other.write_bytes(b"")
  with pytest.raises(ValueError, match="expected a torch .pth or"):
    inception.load_inception(str(other))
  with pytest.raises(ValueError, match="must name an .npz"):
    inception_command.main(["--convert", str(other), "--out", str(tmp_path / "out.pickle")])


def _torch_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """torch's bilinear ``interpolate(align_corners=False)`` of one ``[H, W]`` image, pixel by
  pixel as its CPU kernel computes it."""
  in_h, in_w = image.shape

  def source(i, in_size, out_size):
    s = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    low = int(s)
    return low, low + (1 if low < in_size - 1 else 0), s - low

  out = np.zeros((out_h, out_w))
  for i in range(out_h):
    y0, y1, fy = source(i, in_h, out_h)
    for j in range(out_w):
      x0, x1, fx = source(j, in_w, out_w)
      out[i, j] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1]) +
                   fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return out


def test_resize_is_torchs_bilinear():
  # Up in one direction, down in the other; and the up-sampling by 2 that torch gives as
  # [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3] for [0, 1, 2, 3].
  image = np.random.default_rng(2).uniform(size=(5, 13)).astype(np.float32)
  rows = inception.bilinear_matrix(5, 9)
  cols = inception.bilinear_matrix(13, 9)
  expected = _torch_bilinear(image, 9, 9)
  np.testing.assert_allclose(rows @ image @ cols.T, expected, atol=1e-6)
  np.testing.assert_allclose(inception.bilinear_matrix(4, 8) @ np.arange(4.0),
                             [0, .25, .75, 1.25, 1.75, 2.25, 2.75, 3])
  batch = jnp.asarray(np.stack([image, 1 - image])[..., None])
  resized = np.asarray(inception.resize_bilinear(batch, 9))
  np.testing.assert_allclose(resized[0, ..., 0], expected, atol=1e-5)
  # jax.image.resize without antialiasing uses the same half-pixel convention.
  reference = jax.image.resize(batch, (2, 9, 9, 1), "linear", antialias=False)
  np.testing.assert_allclose(resized, np.asarray(reference), atol=1e-5)
  np.testing.assert_array_equal(inception.bilinear_matrix(7, 7), np.eye(7))


def test_preprocess_repeats_grey_and_scales_to_plus_minus_one():
  grey = np.random.default_rng(3).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  out = np.asarray(inception.preprocess(grey))
  assert out.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(out, np.asarray(inception.preprocess(np.repeat(grey, 3, -1))))
  np.testing.assert_allclose(np.asarray(inception.preprocess(np.ones((1, 8, 8, 3)))), 1.0)
  np.testing.assert_allclose(np.asarray(inception.preprocess(np.zeros((1, 8, 8, 1)))), -1.0)
  with pytest.raises(ValueError, match="1 or 3"):
    inception.preprocess(np.zeros((1, 8, 8, 2)))


def test_small_input_gives_finite_features(variables):
  x = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 75, 75, 3)), jnp.float32)
  pool_3, logits = jax.jit(inception.InceptionV3().apply)(variables, x)
  assert pool_3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(pool_3)) and np.all(np.isfinite(logits))
  # Different images, different features: the random network is not degenerate.
  assert np.abs(np.asarray(pool_3[0] - pool_3[1])).max() > 1e-4


def test_feature_fn_resizes_and_drops_padding_rows(variables):
  feature_fn = inception.make_feature_fn(variables, Devices())
  images = np.random.default_rng(5).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  pool_3, logits = feature_fn({"image": images, "mask": np.array([1.0, 0.0])})
  assert pool_3.shape == (1, 2048) and logits.shape == (1, 1008)
  assert pool_3.dtype == np.float64
  assert np.all(np.isfinite(pool_3)) and np.all(np.isfinite(logits))
