"""Released checkpoints of the authors' code (``models.released`` and its command, ``python -m
released_checkpoints``): files written here in their two formats (from the format description:
their key names, layouts and train-state layout; random weights), loaded, sampled from,
converted into a workdir, and every way such a file can fail to fit."""

import collections
import io
import os
import pickle
import sys
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import builders
import datasets
import losses
import released_checkpoints
import run_lib
from configs.subvp import cifar10_ddpmpp_continuous as ddpmpp_config
from configs.ve import cifar10_ncsnpp as ncsnpp_discrete_config
from configs.ve import cifar10_ncsnpp_continuous as ncsnpp_config
from configs.ve.ncsn import cifar10 as ncsn_config
from configs.ve.ncsnv2 import cifar10 as ncsnv2_config
from configs.vp.ddpm import cifar10 as ddpm_discrete_config
from configs.vp.ddpm import cifar10_continuous as ddpm_config
from evaluation import eval_cache
from infra import checkpoints
from models import released as rc
from models import utils as mutils


def _tiny(module, nf=16):
  config = module.get_config()
  m = config.model
  if m.name in ("ncsnpp", "ddpm"):
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = nf, (1, 2), 1, (4,)
  else:
    m.nf = nf
  m.num_scales = 4
  config.data.image_size = 8
  config.sampling.corrector = "none"
  config.eval.batch_size = 2
  return config


CONFIGS = {
    "ncsnpp": lambda: _tiny(ncsnpp_config),
    "ddpmpp": lambda: _tiny(ddpmpp_config),
    "ddpm": lambda: _tiny(ddpm_config, nf=32),  # GroupNorm with 32 groups
    "ncsnv2": lambda: _tiny(ncsnv2_config, nf=8),
    "ncsn": lambda: _tiny(ncsn_config, nf=8),
}


def _random_params(config, seed):
  """The config's network and random parameters of its shapes (float32 numpy arrays)."""
  model = builders.build_model(config)
  shape = datasets.input_shape(config)
  template = jax.eval_shape(
      lambda x, y: model.init(jax.random.PRNGKey(0), x, y, train=False),
      jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.float32))
  rng = np.random.default_rng(seed)
  return model, jax.tree_util.tree_map(
      lambda leaf: (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32),
      template["params"])


def _flat(tree, prefix=()):
  if isinstance(tree, dict):
    return {p: v for k, sub in tree.items() for p, v in _flat(sub, prefix + (k,)).items()}
  return {prefix: np.asarray(tree)}


def _nest(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _assert_same(tree, expected):
  got, want = _flat(tree), _flat(expected)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg="/".join(path))


# ----------------------------------------------------------------------------- Flax format


# The authors' NCSN v1 names its conditional blocks apart and keeps the conditional
# InstanceNorm++ table in an nn.Embed.
_AUTHORS_NCSN_NAMES = (("ResidualBlock_", "ConditionalResidualBlock_"),
                       ("RefineBlock_", "CondRefineBlock_"), ("RCUBlock_", "CondRCUBlock_"),
                       ("MSFBlock_", "CondMSFBlock_"), ("CRPBlock_", "CondCRPBlock_"))


def _authors_path(path):
  names = []
  for name in path:
    for ours, theirs in _AUTHORS_NCSN_NAMES:
      if name.startswith(ours):
        name = theirs + name[len(ours):]
    names.append(name)
  if path[-1] == "embedding":
    names.insert(len(names) - 1, "Embed_0")
  return tuple(names)


def _old_flax_layout(params):
  """The authors' Flax tree: their names, and (Flax <= 0.3.5) GroupNorm and InstanceNorm(++)
  parameters as [1, 1, 1, C]."""
  return _nest({_authors_path(p): v.reshape(1, 1, 1, -1) if v.ndim == 1 and "Norm" in p[-2] else v
                for p, v in _flat(params).items()})


def _write_flax(path, raw, ema, step):
  """The authors' State(step, optimizer, lr, model_state, ema_rate, params_ema, rng), as
  flax.training.checkpoints.save_checkpoint wrote it (msgpack of the state dict)."""
  zeros = jax.tree_util.tree_map(np.zeros_like, _old_flax_layout(raw))
  state = {
      "step": np.asarray(step),
      "optimizer": {"target": _old_flax_layout(raw), "state": {
          "step": np.asarray(step),
          "param_states": jax.tree_util.tree_map(
              lambda z: {"grad_ema": z, "grad_sq_ema": z}, zeros)}},
      "lr": np.asarray(2e-4), "model_state": {}, "ema_rate": np.asarray(0.9999),
      "params_ema": _old_flax_layout(ema), "rng": np.asarray(jax.random.PRNGKey(3)),
  }
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(state))


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_flax_file_loads_ema_and_raw_parameters_exactly(tmp_path, family):
  config = CONFIGS[family]()
  model, raw = _random_params(config, 0)
  _, ema = _random_params(config, 1)
  path = str(tmp_path / "checkpoint_3")
  _write_flax(path, raw, ema, step=150000)
  assert rc.detect_format(path) == rc.FLAX_MSGPACK
  _, released = builders.load_released(config, path)
  assert (released.step, released.format, released.ema) == (150000, rc.FLAX_MSGPACK, True)
  _assert_same(released.params, ema)
  _assert_same(builders.load_released(config, path, ema=False)[1].params, raw)


# ----------------------------------------------------------------------------- PyTorch format

# The order in which the authors' PyTorch U-Nets append their layers to all_modules (their
# constructors, for the tiny configs above), named as this project's layers.
TORCH_LAYERS = {
    "ncsnpp": [
        "GaussianFourierProjection_0", "Dense_0", "Dense_1", "Conv_0",
        "ResnetBlockBigGANpp_0", "ResnetBlockBigGANpp_1", "Downsample_0",
        "ResnetBlockBigGANpp_2", "AttnBlockpp_0",
        "ResnetBlockBigGANpp_3", "AttnBlockpp_1", "ResnetBlockBigGANpp_4",
        "ResnetBlockBigGANpp_5", "ResnetBlockBigGANpp_6", "AttnBlockpp_2",
        "ResnetBlockBigGANpp_7", "ResnetBlockBigGANpp_8", "ResnetBlockBigGANpp_9",
        "GroupNorm_0", "Conv_1",
    ],
    "ddpm": [
        "Dense_0", "Dense_1", "Conv_0", "ResnetBlockDDPM_0", "Downsample_0",
        "ResnetBlockDDPM_1", "AttnBlock_0", "ResnetBlockDDPM_2", "AttnBlock_1",
        "ResnetBlockDDPM_3", "ResnetBlockDDPM_4", "ResnetBlockDDPM_5", "AttnBlock_2",
        "Upsample_0", "ResnetBlockDDPM_6", "ResnetBlockDDPM_7", "GroupNorm_0", "Conv_1",
    ],
}

_TO_TORCH = {  # Flax leaf -> (PyTorch leaf, layout)
    "Conv": {"kernel": ("weight", lambda w: w.transpose(3, 2, 0, 1)), "bias": ("bias", None)},
    "Conv2d": {"weight": ("weight", lambda w: w.transpose(3, 2, 0, 1)), "bias": ("bias", None)},
    "Dense": {"kernel": ("weight", lambda w: w.T), "bias": ("bias", None)},
    "GroupNorm": {"scale": ("weight", None), "bias": ("bias", None)},
    "NIN": {"W": ("W", None), "b": ("b", None)},
    "GaussianFourierProjection": {"W": ("W", None)},
}


def _authors_sigmas(config):
  """score_sde's get_sigmas(config), which their PyTorch networks keep as a buffer: geometric,
  from sigma_max down to sigma_min (written here from their code, not from the project's)."""
  m = config.model
  return np.exp(np.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


def _torch_state_dict(params, layers, sigmas):
  """``module.*`` keys of a DataParallel state dict: the sigmas buffer, then all_modules."""
  flat = _flat(params)
  state = collections.OrderedDict(sigmas=np.asarray(sigmas, np.float32))
  for index, name in enumerate(layers):
    for path in sorted((p for p in flat if p[0] == name), key=lambda p: p[1:]):
      kind = path[-2].rsplit("_", 1)[0]
      leaf, layout = _TO_TORCH[kind][path[-1]]
      value = flat[path] if layout is None else layout(flat[path])
      state[".".join(("all_modules", str(index)) + path[1:-1] + (leaf,))] = value
  return collections.OrderedDict((f"module.{k}", v) for k, v in state.items())


class _Global:
  """A torch global named in the written pickle (torch itself is not needed to write it)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    raise TypeError(f"{self.module}.{self.name} exists only in the written file")


class _Tensor:
  def __init__(self, array, key):
    self.array, self.key = np.ascontiguousarray(array, np.float32), key

  def __reduce__(self):
    stride = tuple(s // 4 for s in self.array.strides)
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self, 0, self.array.shape, stride, False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[_Global] = lambda self, g: self.write(
      pickle.GLOBAL + f"{g.module}\n{g.name}\n".encode())

  def persistent_id(self, obj):
    # A tensor's storage: torch writes ('storage', type, key, location, numel).
    if isinstance(obj, _Tensor) and getattr(self, "_in_reduce", None) is obj:
      return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.array.size)
    return None

  def save_reduce(self, func, args, *rest, obj=None, **kwargs):
    self._in_reduce = obj
    super().save_reduce(func, args, *rest, obj=obj, **kwargs)


def _write_torch_zip(path, tree):
  """torch.save's zip layout: <name>/data.pkl and the raw storages <name>/data/<key>."""
  tensors = []

  def wrap(x):
    if isinstance(x, np.ndarray):
      tensors.append(_Tensor(x, str(len(tensors))))
      return tensors[-1]
    if isinstance(x, dict):
      return type(x)((k, wrap(v)) for k, v in x.items())
    if isinstance(x, list):
      return [wrap(v) for v in x]
    return x

  buffer = io.BytesIO()
  _TorchPickler(buffer, protocol=2).dump(wrap(tree))
  name = os.path.splitext(os.path.basename(path))[0]
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{name}/data.pkl", buffer.getvalue())
    archive.writestr(f"{name}/byteorder", "little")
    for t in tensors:
      archive.writestr(f"{name}/data/{t.key}", t.array.tobytes())
    archive.writestr(f"{name}/version", "3\n")


def _write_torch(path, raw, ema, family, step, sigmas):
  model = _torch_state_dict(raw, TORCH_LAYERS[family], sigmas)
  shadow_dict = _torch_state_dict(ema, TORCH_LAYERS[family], sigmas)
  # The EMA shadows every parameter with requires_grad, in order: all but buffers and Fourier W.
  frozen = {f"module.all_modules.{i}.W" for i, name in enumerate(TORCH_LAYERS[family])
            if name.startswith("GaussianFourierProjection")}
  shadow = [v for k, v in shadow_dict.items() if k != "module.sigmas" and k not in frozen]
  _write_torch_zip(path, {
      "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999),
                                                   "params": list(range(len(shadow)))}]},
      "model": model, "ema": {"decay": 0.9999, "num_updates": None, "shadow_params": shadow},
      "step": step})


@pytest.mark.parametrize("family", sorted(TORCH_LAYERS))
def test_pytorch_file_loads_ema_and_raw_parameters_exactly(tmp_path, family):
  config = CONFIGS[family]()
  _, raw = _random_params(config, 0)
  _, ema = _random_params(config, 1)
  path = str(tmp_path / "checkpoint_3.pth")
  _write_torch(path, raw, ema, family, step=1300001, sigmas=_authors_sigmas(config))
  assert rc.detect_format(path) == rc.PYTORCH
  _, released = builders.load_released(config, path)
  assert (released.step, released.format) == (1300001, rc.PYTORCH)
  # The Fourier W is not trained, so the EMA list skips it and it stays the model's.
  expected = _flat(ema)
  for p in expected:
    if p[0].startswith("GaussianFourierProjection"):
      expected[p] = _flat(raw)[p]
  _assert_same(released.params, _nest(expected))
  _assert_same(builders.load_released(config, path, ema=False)[1].params, raw)


def test_pytorch_layers_out_of_order_are_refused(tmp_path):
  config = CONFIGS["ddpm"]()
  _, raw = _random_params(config, 0)
  layers = list(TORCH_LAYERS["ddpm"])
  layers[3], layers[4] = layers[4], layers[3]  # a resblock and a downsample swapped
  path = str(tmp_path / "checkpoint_1.pth")
  _write_torch_zip(path, {"model": _torch_state_dict(raw, layers, _authors_sigmas(config)),
                          "step": 1})
  with pytest.raises(rc.ReleasedCheckpointError,
                     match=r"all_modules.3 \(Conv_0.bias, Conv_0.weight\) does not fit the "
                     "config's layer ResnetBlockDDPM_0") as e:
    builders.load_released(config, path, ema=False)
  assert "\n" not in str(e.value)


def test_pytorch_file_without_all_modules_is_refused(tmp_path):
  path = str(tmp_path / "checkpoint_1.pth")
  weight = np.zeros((8, 3, 3, 3), np.float32)
  _write_torch_zip(path, {"model": {"module.begin_conv.weight": weight}, "step": 1})
  with pytest.raises(rc.ReleasedCheckpointError, match="only the authors' U-Nets"):
    builders.load_released(CONFIGS["ncsnv2"](), path, ema=False)


def test_unpickler_refuses_other_globals(tmp_path):
  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.GLOBAL + b"os\nsystem\n" + pickle.STOP)
  with pytest.raises(rc.ReleasedCheckpointError, match="refusing to load os.system"):
    builders.load_released(CONFIGS["ddpm"](), path)


# ----------------------------------------------------------------------------- noise levels

# Discretely trained configs (the SMLD / DDPM losses), with the authors' N = 1000 levels.
DISCRETE = {
    "ncsnpp": lambda: _tiny(ncsnpp_discrete_config),
    "ncsnv2": lambda: _tiny(ncsnv2_config, nf=8),
    "ncsn": lambda: _tiny(ncsn_config, nf=8),
    "ddpm": lambda: _tiny(ddpm_discrete_config, nf=32),
}


def _authors_score(config, model, params, x, t):
  """score_sde's get_score_fn for a discretely trained model, written from their models/utils.py
  and sde_lib.py (not from this project's): VE feeds ``round((T - t)(N - 1))``, an index into
  their descending sigmas, and NCSNv2 / NCSN++ divide by ``sigmas[labels]``; VP (DDPM) feeds
  ``t (N - 1)`` unrounded and divides ``-out`` by ``sqrt(1 - alpha_bar)[int32(labels)]``.
  Returns ``(score, labels)``."""
  m, n = config.model, config.model.num_scales
  if config.training.sde == "vesde":
    labels = np.round((1.0 - t) * (n - 1)).astype(np.int32)
    out = np.asarray(model.apply({"params": params}, x, jnp.asarray(labels, jnp.float32)))
    scale = _authors_sigmas(config)[labels] if m.scale_by_sigma else np.ones(len(t))
    return out / scale[:, None, None, None], labels
  labels = t * np.float32(n - 1)
  out = np.asarray(model.apply({"params": params}, x, jnp.asarray(labels)))
  betas = np.linspace(m.beta_min / n, m.beta_max / n, n)
  std = np.sqrt(1.0 - np.cumprod(1.0 - betas))[labels.astype(np.int32)]
  return -out / std[:, None, None, None], labels


@pytest.mark.parametrize("family", sorted(DISCRETE))
def test_discrete_scores_of_released_files_follow_the_authors_labels(tmp_path, family):
  config = DISCRETE[family]()
  config.model.num_scales = 1000
  assert not config.training.continuous
  _, ema = _random_params(config, 1)
  path = str(tmp_path / "checkpoint_5")
  _write_flax(path, ema, ema, step=5)
  model, released = builders.load_released(config, path)
  sde = builders.build_sde(config)
  x = np.random.default_rng(2).standard_normal((4, 8, 8, 3)).astype(np.float32)
  t = np.array([0.05, 0.3, 0.6, 0.95], np.float32)
  ours = jax.jit(mutils.get_score_fn(sde, model, released.params, continuous=False))(x, t)
  theirs, labels = _authors_score(config, model, released.params, x, t)
  if config.training.sde == "vesde":
    assert labels.tolist() == [949, 699, 400, 50]  # label 0 is sigma_max
  scale = float(np.max(np.abs(theirs)))
  np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-5, atol=1e-5 * scale)


def test_a_sigmas_buffer_other_than_the_configs_is_refused(tmp_path):
  config = CONFIGS["ddpm"]()
  _, params = _random_params(config, 0)
  cases = [("num_scales", 1000, r"model.num_scales=4 \(the file's: 1000\)"),
           ("sigma_max", 378.0, r"model.sigma_max=50 \(the file's: 378\)"),
           ("sigma_min", 0.002, r"model.sigma_min=0.01 \(the file's: 0.002\)")]
  for field, value, match in cases:
    other = CONFIGS["ddpm"]()
    other.model[field] = value
    path = str(tmp_path / f"checkpoint_{field}.pth")
    _write_torch(path, params, params, "ddpm", step=2, sigmas=_authors_sigmas(other))
    _one_line_error_leaves_workdir_alone(tmp_path, config, path,
                                         "contradicts the config's " + match)
    with pytest.raises(rc.ReleasedCheckpointError, match=match):
      builders.load_released(config, path)
  path = str(tmp_path / "checkpoint_linear.pth")
  _write_torch(path, params, params, "ddpm", step=2, sigmas=np.linspace(50.0, 0.01, 4))
  _one_line_error_leaves_workdir_alone(tmp_path, config, path, "not the config's geometric")


# ----------------------------------------------------------------------------- use


def test_converted_checkpoint_restores_and_samples_like_a_trained_one(tmp_path):
  config = CONFIGS["ncsnpp"]()
  _, raw = _random_params(config, 0)
  _, ema = _random_params(config, 1)
  path = str(tmp_path / "checkpoint_8")
  _write_flax(path, raw, ema, step=800)
  workdir = str(tmp_path / "work")
  written = released_checkpoints.convert(config, path, workdir)
  assert written == os.path.join(workdir, "checkpoints", "800")
  template = jax.eval_shape(lambda p: losses.init_train_state(
      jax.random.PRNGKey(0), p, builders.build_optimizer(config)), raw)
  with checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), writer=False) as store:
    state = store.restore(800, template)
  assert int(state.step) == 800
  _assert_same(state.ema_params, ema)
  _assert_same(state.params, raw)
  # --mode sample on the workdir, unchanged: the EMA parameters, model.num_scales = 4 steps.
  result = run_lib.sample(config, workdir, num_samples=2, num_frames=0)
  assert result["step"] == 800
  assert result["nfe"] == 4 + int(config.sampling.noise_removal)
  samples = np.load(os.path.join(result["path"], "sample.npz"))
  assert all(np.all(np.isfinite(samples[k])) for k in samples.files)


# ----------------------------------------------------------------------------- failures


def _one_line_error_leaves_workdir_alone(tmp_path, config, path, match):
  workdir = tmp_path / "work"
  with pytest.raises(ValueError, match=match) as e:
    released_checkpoints.convert(config, path, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


def test_wrong_config_for_the_file(tmp_path):
  config = CONFIGS["ddpmpp"]()
  _, params = _random_params(config, 0)
  path = str(tmp_path / "checkpoint_1")
  _write_flax(path, params, params, step=1)
  wider = CONFIGS["ddpmpp"]()
  wider.model.nf = 32
  _one_line_error_leaves_workdir_alone(
      tmp_path, wider, path, r"GroupNorm_0/bias has shape \[1, 1, 1, 32\] in the checkpoint, "
      r"\[64\] in the config's network")
  _one_line_error_leaves_workdir_alone(tmp_path, CONFIGS["ncsnpp"](), path,
                                       "the config's network has Downsample_0/Conv2d_0/bias")


def test_truncated_files(tmp_path):
  config = CONFIGS["ddpm"]()
  _, params = _random_params(config, 0)
  flax_path, torch_path = str(tmp_path / "checkpoint_1"), str(tmp_path / "checkpoint_1.pth")
  _write_flax(flax_path, params, params, step=1)
  _write_torch(torch_path, params, params, "ddpm", step=1, sigmas=_authors_sigmas(config))
  for path in (flax_path, torch_path):
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 2])
    _one_line_error_leaves_workdir_alone(tmp_path, config, path, "truncated")


def test_unknown_format_and_missing_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("not a checkpoint")
  config = CONFIGS["ddpm"]()
  _one_line_error_leaves_workdir_alone(tmp_path, config, str(path), "neither a Flax")
  (tmp_path / "empty").write_bytes(b"")
  _one_line_error_leaves_workdir_alone(tmp_path, config, str(tmp_path / "empty"), "empty file")
  _one_line_error_leaves_workdir_alone(tmp_path, config, str(tmp_path / "absent"), "cannot read")


def test_legacy_torch_file_without_torch_names_the_requirement(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
  path = tmp_path / "checkpoint_1.pth"
  path.write_bytes(rc._LEGACY_TORCH_MAGIC + b"\x00" * 64)  # pylint: disable=protected-access
  _one_line_error_leaves_workdir_alone(tmp_path, CONFIGS["ddpm"](), str(path),
                                       "pip install -r requirements-torch.txt")


# torch's message when a weights-only load meets a global it does not admit (torch >= 2.6).
_TORCH_REFUSAL = (
    "Weights only load failed. This file can still be loaded, to do so you have two options, "
    "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) In "
    "PyTorch 2.6, we changed the default value of the `weights_only` argument in `torch.load` "
    "from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` will "
    "likely succeed, but it can result in arbitrary code execution.\n\tWeightsUnpickler error: "
    "Unsupported global: GLOBAL posix.system was not an allowed global by default.")


def test_a_legacy_file_torch_refuses_is_refused_without_unsafe_advice(tmp_path, monkeypatch):
  fake_torch = type(sys)("torch")

  def load(*args, weights_only, **kwargs):
    del args, kwargs
    assert weights_only
    raise pickle.UnpicklingError(_TORCH_REFUSAL)

  fake_torch.load = load
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  path = tmp_path / "checkpoint_1.pth"
  path.write_bytes(rc._LEGACY_TORCH_MAGIC + b"\x00" * 64)  # pylint: disable=protected-access
  with pytest.raises(rc.ReleasedCheckpointError) as e:
    released_checkpoints.convert(CONFIGS["ddpm"](), str(path), str(tmp_path / "work"))
  message = str(e.value)
  assert "it would call posix.system" in message and "\n" not in message
  assert "weights_only" not in message and "trust" not in message


def test_convert_refuses_a_workdir_with_checkpoints(tmp_path):
  config = CONFIGS["ncsnv2"]()
  _, params = _random_params(config, 0)
  path = str(tmp_path / "checkpoint_2")
  _write_flax(path, params, params, step=2)
  workdir = str(tmp_path / "work")
  released_checkpoints.convert(config, path, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(rc.ReleasedCheckpointError, match="already holds step") as e:
    released_checkpoints.convert(config, path, workdir, ema=False)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_sample_and_eval_read_a_released_file_directly(tmp_path):
  """--mode sample and --mode eval with --checkpoint=<released file>: the file's EMA parameters,
  named by its step, in a workdir that holds no checkpoints; nothing is written to checkpoints/."""
  config = CONFIGS["ddpm"]()
  _, raw = _random_params(config, 0)
  _, ema = _random_params(config, 1)
  path = str(tmp_path / "checkpoint_8.pth")
  _write_torch(path, raw, ema, "ddpm", step=150000, sigmas=_authors_sigmas(config))
  workdir = str(tmp_path / "work")
  result = run_lib.sample(config, workdir, checkpoint=path, num_samples=2, num_frames=0)
  assert result["step"] == 150000 and "released_step_150000" in result["path"]
  config.eval.update(dict(enable_loss=False, enable_bpd=False, enable_sampling=True, num_samples=2))
  summary = run_lib.evaluate(config, workdir, checkpoint=path)
  assert list(summary) == ["150000"] and summary["150000"]["num_samples"] == 2
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  # The EMA parameters were evaluated: their digest names the results.
  assert summary["150000"]["settings"]["checkpoint.digest"] == eval_cache.tree_digest(
      jax.tree_util.tree_map(jnp.asarray, ema))
  with pytest.raises(FileNotFoundError, match="released files"):
    run_lib.evaluate(config, workdir, checkpoint=str(tmp_path / "nowhere"))
