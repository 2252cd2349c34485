"""The authors' released checkpoints (Song et al. 2021) as this project's parameters.

Two formats, told apart by their bytes (:func:`detect_format`), not by the file name:

* ``flax_msgpack``: ``checkpoints/checkpoint_<k>`` of the authors' JAX code, the msgpack of
  their train state ``{step, optimizer: {target: params, state: {...}}, lr, model_state,
  ema_rate, params_ema, rng}``. Their Flax modules carry the same names as this project's
  (``ResnetBlockBigGANpp_3/Conv_1/kernel``, ...) for NCSN++, DDPM++, DDPM and NCSNv2, so
  parameters match path by path; NCSN v1's conditional blocks are renamed one to one
  (:data:`_FLAX_RENAMES`). The one layout difference is that Flax <= 0.3.5 stored normalization
  parameters (GroupNorm ``scale``/``bias``, InstanceNorm++ ``alpha``/``gamma``/``beta``) as
  ``[1, 1, 1, C]`` where this project has ``[C]``.
* ``pytorch``: ``checkpoint_<k>.pth`` of the authors' PyTorch port, ``{optimizer, model, ema:
  {decay, num_updates, shadow_params}, step}``. ``model`` is a ``DataParallel`` state dict
  (keys ``module.*``, a ``module.sigmas`` buffer); the U-Nets (NCSN++, DDPM++, DDPM) keep their
  layers in ``module.all_modules.<N>`` in the order the forward pass uses them, each block with
  the Flax names inside (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``Conv2d_0``).
  Layouts: convolutions ``[O, I, kh, kw]`` (Flax ``[kh, kw, I, O]``), dense ``[out, in]`` (Flax
  ``[in, out]``), GroupNorm ``weight`` (Flax ``scale``); NIN ``W`` is ``[in, out]`` in both.
  ``ema.shadow_params`` is a list over the parameters that require gradients, in the state
  dict's order: every parameter except the Fourier features' ``W``. The port's NCSNv2 and NCSN
  keep their layers in named attributes instead; none is among the released checkpoints, and
  such files are refused in one line.

Matching PyTorch layers to this project's: the ``all_modules`` indices that hold parameters,
ascending, pair with this project's top-level layers that hold parameters in the order the
network calls them (found by tracing it); each pair must agree in every key and shape.

Nothing is guessed: the first missing or unexpected key, or the first shape that differs, is
reported in one line (:class:`ReleasedCheckpointError`, a ``ValueError``). A PyTorch file's
``sigmas`` buffer (the authors' descending noise ladder, which every one of their networks
registers) must be the :class:`NoiseLadder` of the config, so a discrete model is not read with
another ``model.num_scales``, ``sigma_min`` or ``sigma_max`` than it was trained with. Parameterless
layers (FIR resamplers, pooling) have no entries in either format.

Reading ``.pth`` files: PyTorch >= 1.6 writes a zip archive (``<name>/data.pkl`` plus raw
storages ``<name>/data/<key>``); it is read here with numpy alone, by an unpickler that
admits only ``OrderedDict``, tensor and storage reconstruction and refuses every other
global, so neither torch nor arbitrary pickled code runs. Only the older non-zip format
needs torch (``pip install -r requirements-torch.txt``).

``builders.load_released`` reads a file for a config's network; ``python -m
released_checkpoints`` writes one into a workdir as an ordinary checkpoint.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import sys
import zipfile
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

Params = Any
Path = Tuple[str, ...]
Flat = Dict[Path, np.ndarray]

FLAX_MSGPACK = "flax_msgpack"
PYTORCH = "pytorch"
TORCH_REQUIREMENT = "pip install -r requirements-torch.txt"

_ZIP_MAGIC = b"PK\x03\x04"
# A legacy (non-zip) torch.save file: pickle protocol 2, then the long MAGIC_NUMBER.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_NORM_LEAVES = ("scale", "bias", "alpha", "gamma", "beta")
_STATE_FIELDS = ("step", "optimizer", "lr", "model_state", "ema_rate", "params_ema", "rng")
_BUFFERS = ("sigmas",)


class ReleasedCheckpointError(ValueError):
  """A released checkpoint that cannot be read, or does not fit the config's network."""


class NoiseLadder(NamedTuple):
  """The noise ladder a config asks for (``model.num_scales``, ``model.sigma_min``,
  ``model.sigma_max``)."""
  num_scales: int
  sigma_min: float
  sigma_max: float

  def sigmas(self) -> np.ndarray:
    """The authors' ``get_sigmas``: ``[num_scales]``, geometric, from ``sigma_max`` down to
    ``sigma_min``."""
    return np.exp(np.linspace(np.log(self.sigma_max), np.log(self.sigma_min), self.num_scales))


class Released(NamedTuple):
  """Parameters read from a released checkpoint.

  Attributes:
    params: this project's parameter tree (nested dicts of float32 ``jax.Array`` s).
    step: the training step the file records.
    format: :data:`FLAX_MSGPACK` or :data:`PYTORCH`.
    ema: whether ``params`` are the EMA parameters (else the raw optimized ones).
  """
  params: Params
  step: int
  format: str
  ema: bool


# ----------------------------------------------------------------------------- formats


def detect_format(path: str) -> str:
  """``'flax_msgpack'`` or ``'pytorch'`` from the first bytes of the file at ``path``.

  Raises:
    ReleasedCheckpointError: a missing file, or one in neither format.
  """
  try:
    with open(path, "rb") as f:
      head = f.read(len(_LEGACY_TORCH_MAGIC))
  except OSError as e:
    raise ReleasedCheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from e
  if head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
    return PYTORCH
  # msgpack maps: fixmap (0x80-0x8f, 0x80 itself is the empty map), map16, map32.
  if head and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
    return FLAX_MSGPACK
  raise ReleasedCheckpointError(
      f"{path} is neither a Flax msgpack checkpoint (checkpoint_<k>) nor a PyTorch one "
      f"(checkpoint_<k>.pth); first bytes {head[:4].hex() or 'none (empty file)'}")


def _read_msgpack(path: str) -> Dict[str, Any]:
  with open(path, "rb") as f:
    data = f.read()
  try:
    state = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack reports truncation and bad bytes with several types
    raise ReleasedCheckpointError(
        f"{path}: not a complete Flax msgpack checkpoint ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); is the file truncated?") from e
  if not isinstance(state, dict):
    raise ReleasedCheckpointError(f"{path}: the msgpack holds a {type(state).__name__}, not "
                                  "the authors' train state (a map)")
  return state


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType(NamedTuple):
  dtype: Any


def _rebuild_tensor(storage: np.ndarray, offset: int, size: Sequence[int],
                    stride: Sequence[int], *unused: Any) -> np.ndarray:
  """``torch._utils._rebuild_tensor_v2`` on a numpy storage: a copy of the strided view."""
  del unused  # requires_grad, backward hooks, metadata
  # as_strided reads whatever memory the strides reach: check they stay in the storage.
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if min(size, default=1) > 0 and (offset < 0 or min(stride, default=0) < 0
                                   or end > storage.size):
    raise pickle.UnpicklingError(f"a tensor of shape {list(size)} reaches past its storage of "
                                 f"{storage.size} values")
  if not size:
    return storage[offset].copy()
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data: np.ndarray, *unused: Any) -> np.ndarray:
  del unused  # requires_grad, backward hooks
  return data


class _NumpyUnpickler(pickle.Unpickler):
  """Reads ``data.pkl`` of a torch zip archive into numpy; refuses every other global."""
  _GLOBALS = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  }

  def __init__(self, path: str, data: bytes, load_storage: Callable[[str, Any], np.ndarray]):
    super().__init__(io.BytesIO(data))
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise ReleasedCheckpointError(f"{self._path}: refusing to load {module}.{name} (only "
                                  "tensors, storages and OrderedDict are read)")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
    return self._load_storage(str(pid[2]), pid[1].dtype)


def _read_torch_zip(path: str) -> Any:
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
      if len(pickles) != 1:
        raise ReleasedCheckpointError(f"{path}: a zip archive without exactly one data.pkl "
                                      f"(found {len(pickles)}); not a torch.save file")
      prefix = pickles[0][:-len("data.pkl")]
      names = set(archive.namelist())
      byteorder = (archive.read(prefix + "byteorder").decode().strip()
                   if prefix + "byteorder" in names else "little")
      cache: Dict[str, np.ndarray] = {}

      def load_storage(key: str, dtype: Any) -> np.ndarray:
        if key not in cache:
          raw = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype)
          cache[key] = raw if byteorder == sys.byteorder else raw.byteswap()
        return cache[key]

      return _NumpyUnpickler(path, archive.read(pickles[0]), load_storage).load()
  except ReleasedCheckpointError:
    raise
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError,
          zlib.error) as e:
    raise ReleasedCheckpointError(f"{path}: not a complete PyTorch checkpoint ({e}); is the "
                                  "file truncated?") from e


def _to_numpy(tree: Any) -> Any:
  """torch tensors inside dicts, lists and tuples -> numpy arrays."""
  if hasattr(tree, "detach") and hasattr(tree, "numpy"):
    return tree.detach().cpu().numpy()
  if isinstance(tree, dict):
    return type(tree)((k, _to_numpy(v)) for k, v in tree.items())
  if isinstance(tree, (list, tuple)):
    return type(tree)(_to_numpy(v) for v in tree)
  return tree


def _read_torch_legacy(path: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ReleasedCheckpointError(
        f"{path} is a legacy (non-zip) torch.save file, which only torch reads: "
        f"{TORCH_REQUIREMENT}") from e
  try:
    return _to_numpy(torch.load(path, map_location="cpu", weights_only=True))
  except pickle.UnpicklingError as e:
    # torch's own message goes on to advise weights_only=False, the unsafe load: not repeated.
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"it would call {found.group(1)}" if found else "it holds more than tensors"
    raise ReleasedCheckpointError(
        f"{path}: refused: {what}, which a weights-only load does not run; the authors' "
        "checkpoints hold only tensors and numbers, so this file is not one of theirs as "
        "released") from e
  except Exception as e:  # torch raises several types for damaged files
    raise ReleasedCheckpointError(f"{path}: torch could not read it ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _read_pytorch(path: str) -> Dict[str, Any]:
  with open(path, "rb") as f:
    zipped = f.read(4) == _ZIP_MAGIC
  state = _read_torch_zip(path) if zipped else _read_torch_legacy(path)
  if not isinstance(state, dict) or "model" not in state:
    raise ReleasedCheckpointError(f"{path}: a torch file without the authors' 'model' entry "
                                  "(expected keys optimizer, model, ema, step)")
  return state


# ----------------------------------------------------------------------------- trees


def _flatten(tree: Any, prefix: Path = ()) -> Flat:
  if isinstance(tree, dict):
    flat: Flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, prefix + (str(key),)))
    return flat
  return {prefix: tree}


def _nest(flat: Dict[Path, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _shape(x: Any) -> Tuple[int, ...]:
  return tuple(int(d) for d in np.shape(x))


def _module_order(path: Path) -> Tuple[Tuple[str, int], ...]:
  """Sort key of a parameter path: layers by kind, then by index (``Conv_10`` after ``Conv_9``)."""
  key = []
  for name in path:
    match = re.fullmatch(r"(.*)_(\d+)", name)
    key.append((match.group(1), int(match.group(2))) if match else (name, -1))
  return tuple(key)


def _fit(source: Flat, template: Flat, where: str) -> Flat:
  """``source`` leaves shaped as ``template``'s, or the first difference in one line."""
  missing = sorted((p for p in template if p not in source), key=_module_order)
  if missing:
    raise ReleasedCheckpointError(
        f"{where}: the config's network has {'/'.join(missing[0])} "
        f"{list(_shape(template[missing[0]]))}, the checkpoint does not"
        + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else "")
        + "; is the config the one this checkpoint was trained with?")
  unexpected = sorted((p for p in source if p not in template), key=_module_order)
  if unexpected:
    raise ReleasedCheckpointError(
        f"{where}: the checkpoint has {'/'.join(unexpected[0])} "
        f"{list(_shape(source[unexpected[0]]))}, the config's network does not"
        + (f" ({len(unexpected) - 1} more unexpected)" if len(unexpected) > 1 else "")
        + "; is the config the one this checkpoint was trained with?")
  fitted = {}
  for path in sorted(template, key=_module_order):
    value, want = np.asarray(source[path]), _shape(template[path])
    got = value.shape
    # Flax <= 0.3.5 kept per-channel normalization parameters as [1, 1, 1, C].
    if (got != want and path[-1] in _NORM_LEAVES and len(want) == 1
        and got == (1, 1, 1) + want):
      value = value.reshape(want)
    if value.shape != want:
      raise ReleasedCheckpointError(
          f"{where}: {'/'.join(path)} has shape {list(got)} in the checkpoint, {list(want)} in "
          "the config's network; is the config the one this checkpoint was trained with?")
    if not np.issubdtype(value.dtype, np.floating):
      raise ReleasedCheckpointError(f"{where}: {'/'.join(path)} holds {value.dtype} values, "
                                    "not floating point")
    fitted[path] = value
  return fitted


# ----------------------------------------------------------------------------- Flax files


# The authors' NCSN v1 has conditional copies of the NCSNv2 blocks under other class names (so
# other Flax layer names), and keeps its conditional InstanceNorm++ table in an ``nn.Embed``;
# this project's NCSN v1 reuses the NCSNv2 blocks with a conditional normalizer that holds the
# table itself. The renames are one-to-one, so the per-kind layer numbering carries over.
_FLAX_RENAMES = (("ConditionalResidualBlock_", "ResidualBlock_"),
                 ("CondRefineBlock_", "RefineBlock_"), ("CondRCUBlock_", "RCUBlock_"),
                 ("CondMSFBlock_", "MSFBlock_"), ("CondCRPBlock_", "CRPBlock_"))


def _project_path(authors_path: Path) -> Path:
  """This project's name of a parameter of the authors' Flax networks."""
  names = []
  for name in authors_path:
    for old, new in _FLAX_RENAMES:
      if name.startswith(old):
        name = new + name[len(old):]
    names.append(name)
  if (len(names) >= 3 and names[-2] == "Embed_0"
      and names[-3].startswith("ConditionalInstanceNorm2dPlus_")):
    del names[-2]
  return tuple(names)


def _flax_params(state: Dict[str, Any], path: str, ema: bool) -> Tuple[Dict[str, Any], int]:
  """The authors' ``params_ema`` (or ``optimizer.target``) and step from their state dict."""
  for key in ("step", "optimizer", "params_ema"):
    if key not in state:
      raise ReleasedCheckpointError(
          f"{path}: a msgpack map without {key!r}; the authors' train state has "
          f"{', '.join(_STATE_FIELDS)}, this one has {', '.join(map(str, state)) or 'nothing'}")
  if ema:
    params = state["params_ema"]
  else:
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict) or "target" not in optimizer:
      raise ReleasedCheckpointError(f"{path}: 'optimizer' has no 'target' (the raw parameters)")
    params = optimizer["target"]
  if not isinstance(params, dict):
    raise ReleasedCheckpointError(f"{path}: the parameters are a {type(params).__name__}, "
                                  "not a tree of layers")
  if state.get("model_state"):
    raise ReleasedCheckpointError(f"{path}: the checkpoint has model state (e.g. batch "
                                  "statistics), which none of the authors' networks has")
  return params, int(np.asarray(state["step"]).reshape(-1)[0])


# ----------------------------------------------------------------------------- PyTorch files

# Per Flax layer kind: PyTorch leaf name -> (Flax leaf name, layout conversion).
_OIHW_TO_HWIO = (2, 3, 1, 0)
_TORCH_LEAVES: Dict[str, Dict[str, Tuple[str, Callable[[np.ndarray], np.ndarray]]]] = {
    "Conv": {"weight": ("kernel", lambda w: w.transpose(_OIHW_TO_HWIO)),
             "bias": ("bias", lambda b: b)},
    "Conv2d": {"weight": ("weight", lambda w: w.transpose(_OIHW_TO_HWIO)),
               "bias": ("bias", lambda b: b)},
    "Dense": {"weight": ("kernel", lambda w: w.T), "bias": ("bias", lambda b: b)},
    "GroupNorm": {"weight": ("scale", lambda w: w), "bias": ("bias", lambda b: b)},
    "NIN": {"W": ("W", lambda w: w), "b": ("b", lambda b: b)},
    "GaussianFourierProjection": {"W": ("W", lambda w: w)},
}
# Parameters the authors' PyTorch modules create with requires_grad=False (not in the EMA).
_FROZEN = {("GaussianFourierProjection", "W")}


def _kind(module_name: str) -> str:
  return re.sub(r"_\d+$", "", module_name)


def top_level_call_order(model: nn.Module, input_shape: Sequence[int]) -> List[str]:
  """Names of ``model``'s direct sublayers in the order its ``__call__`` first calls them.

  Traced abstractly (``jax.eval_shape``), so it costs no compute; ``input_shape`` is
  ``[B, H, W, C]`` (``labels`` are ``[B]`` ones).
  """
  order: List[str] = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name == "__call__" and len(path) == 1 and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((input_shape[0],), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x, y: model.init({"params": jax.random.PRNGKey(0)}, x, y, train=False),
                   x, labels)
  return order


def _torch_model_dict(state: Dict[str, Any], path: str) -> "collections.OrderedDict[str, Any]":
  model = state["model"]
  if not isinstance(model, dict) or not model:
    raise ReleasedCheckpointError(f"{path}: 'model' is not a state dict")
  if all(k.startswith("module.") for k in model):  # saved from a DataParallel wrapper
    model = collections.OrderedDict((k[len("module."):], v) for k, v in model.items())
  return collections.OrderedDict(model)


def _torch_layers(model: Dict[str, Any], path: str) -> Dict[int, Dict[Tuple[str, ...], str]]:
  """``all_modules.<N>.<rest>`` keys grouped by ``N``: ``{N: {rest: key}}``."""
  layers: Dict[int, Dict[Tuple[str, ...], str]] = {}
  for key in model:
    if key in _BUFFERS:
      continue
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "all_modules" or not parts[1].isdigit():
      raise ReleasedCheckpointError(
          f"{path}: model key {key!r} is not all_modules.<N>.*; only the authors' U-Nets "
          "(NCSN++, DDPM++, DDPM) are read from PyTorch files")
    layers.setdefault(int(parts[1]), {})[tuple(parts[2:])] = key
  return layers


def _layer_names(layers: Dict[int, Any], template: Flat, order: Sequence[str],
                 path: str) -> Dict[int, str]:
  """``{N: name}``: the ``all_modules`` indices with parameters, ascending, paired with the
  network's top-level layers with parameters in call order."""
  with_params = [name for name in order if any(p[0] == name for p in template)]
  unordered = sorted({p[0] for p in template} - set(with_params), key=lambda n: _module_order((n,)))
  if unordered:
    raise ReleasedCheckpointError(f"{path}: the network's layer {unordered[0]} was not seen "
                                  "when tracing it; cannot place it")
  indices = sorted(layers)
  if len(indices) != len(with_params):
    raise ReleasedCheckpointError(
        f"{path}: the checkpoint has {len(indices)} layers with parameters "
        f"(all_modules.{indices[0]}..{indices[-1]}), the config's network "
        f"{len(with_params)}; is the config the one this checkpoint was trained with?")
  return dict(zip(indices, with_params))


def _torch_to_flax(values: Dict[str, np.ndarray], model: Dict[str, Any], template: Flat,
                   order: Sequence[str], path: str) -> Flat:
  """Maps ``values`` (torch key -> array, keys of ``model``) onto ``template``'s paths."""
  layers = _torch_layers(model, path)
  flat: Flat = {}
  for index, name in _layer_names(layers, template, order, path).items():
    for rest, key in layers[index].items():
      owner = (name,) + rest[:-1]
      kind = _kind(owner[-1])
      table = _TORCH_LEAVES.get(kind, {})
      if rest[-1] not in table:
        raise ReleasedCheckpointError(
            f"{path}: {key} {list(_shape(values[key]))} has no counterpart in the config's "
            f"layer {name} ({kind}); is the config the one this checkpoint was trained with?")
      leaf, convert = table[rest[-1]]
      flat[owner + (leaf,)] = convert(np.asarray(values[key]))
    lacking = sorted((p for p in template if p[0] == name and p not in flat), key=_module_order)
    if lacking:
      raise ReleasedCheckpointError(
          f"{path}: all_modules.{index} ({', '.join('.'.join(r) for r in layers[index])}) "
          f"does not fit the config's layer {name}: it lacks {'/'.join(lacking[0])}; is the "
          "config the one this checkpoint was trained with?")
  return flat


def _shadow_values(state: Dict[str, Any], model: Dict[str, Any], template: Flat,
                   order: Sequence[str], path: str) -> Dict[str, np.ndarray]:
  """``model`` with the EMA ``shadow_params`` list in place of the parameters it shadows."""
  ema = state.get("ema")
  if not isinstance(ema, dict) or "shadow_params" not in ema:
    raise ReleasedCheckpointError(f"{path}: no 'ema' entry with 'shadow_params'; load the raw "
                                  "parameters (ema=False, --raw) instead")
  shadow = list(ema["shadow_params"])
  names = _layer_names(_torch_layers(model, path), template, order, path)
  trained = []
  for key in model:
    if key in _BUFFERS:
      continue
    parts = key.split(".")
    owner = (names[int(parts[1])],) + tuple(parts[2:-1])
    if (_kind(owner[-1]), parts[-1]) not in _FROZEN:
      trained.append(key)
  if len(shadow) != len(trained):
    raise ReleasedCheckpointError(
        f"{path}: ema.shadow_params has {len(shadow)} tensors, the model's trainable "
        f"parameters are {len(trained)}; the EMA does not belong to this model")
  values = dict(model)
  for key, tensor in zip(trained, shadow):
    if _shape(tensor) != _shape(model[key]):
      raise ReleasedCheckpointError(
          f"{path}: ema.shadow_params entry for {key} has shape {list(_shape(tensor))}, the "
          f"model's {list(_shape(model[key]))}; the EMA list is out of order")
    values[key] = tensor
  return values


# ----------------------------------------------------------------------------- loading


def _read(path: str) -> Tuple[str, Dict[str, Any]]:
  fmt = detect_format(path)
  return fmt, (_read_msgpack(path) if fmt == FLAX_MSGPACK else _read_pytorch(path))


def _check_ladder(buffer: Any, ladder: NoiseLadder, path: str) -> None:
  """One line naming the config fields a PyTorch file's ``sigmas`` buffer contradicts."""
  if buffer is None:
    raise ReleasedCheckpointError(f"{path}: the model has no sigmas buffer, which every network "
                                  "of the authors' PyTorch code registers")
  found = np.asarray(buffer, np.float64).reshape(-1)
  expected = ladder.sigmas()
  if found.shape == expected.shape and np.allclose(found, expected, rtol=1e-5, atol=0.0):
    return
  if found.size == 0:
    raise ReleasedCheckpointError(f"{path}: its sigmas buffer is empty")
  file_ladder = NoiseLadder(found.size, float(found[-1]), float(found[0]))
  wrong = [f"model.{name}={want:g} (the file's: {got:g})"
           for name, want, got in zip(NoiseLadder._fields, ladder, file_ladder)
           if not np.isclose(want, got, rtol=1e-5, atol=0.0)]
  raise ReleasedCheckpointError(
      f"{path}: its sigmas buffer ({found.size} levels from {found[0]:g} down to {found[-1]:g}) "
      + (f"contradicts the config's {', '.join(wrong)}" if wrong else
         "is not the config's geometric noise ladder")
      + "; is the config the one this checkpoint was trained with?")


def _params_of(fmt: str, state: Dict[str, Any], path: str, model: nn.Module,
               flat_template: Flat, order: Optional[List[str]], ema: bool,
               ladder: Optional[NoiseLadder]) -> Tuple[Params, int]:
  where = f"{path} ({'EMA' if ema else 'raw'} parameters)"
  if fmt == FLAX_MSGPACK:
    params, step = _flax_params(state, path, ema)
    fitted = _fit({_project_path(p): v for p, v in _flatten(params).items()}, flat_template,
                  where)
  else:
    model_dict = _torch_model_dict(state, path)
    values = (_shadow_values(state, model_dict, flat_template, order, path) if ema
              else dict(model_dict))
    fitted = _fit(_torch_to_flax(values, model_dict, flat_template, order, path),
                  flat_template, where)
    if ladder is not None:  # once the file is known to be one of the authors' networks
      _check_ladder(model_dict.get("sigmas"), ladder, path)
    step = int(np.asarray(state.get("step", 0)).reshape(-1)[0])
  return _nest({p: jnp.asarray(v, dtype=flat_template[p].dtype) for p, v in fitted.items()}), step


def load(path: str, model: nn.Module, template: Params, input_shape: Sequence[int], *,
         ema: bool = True, ladder: Optional[NoiseLadder] = None) -> Released:
  """Reads a released checkpoint of either format as parameters of ``model``.

  Args:
    path: the file (``checkpoint_<k>`` or ``checkpoint_<k>.pth``).
    model: this project's network for the checkpoint's config.
    template: ``model``'s parameter tree (arrays or ``jax.ShapeDtypeStruct`` s, e.g. from
      ``jax.eval_shape``); the result has its structure, shapes and dtypes.
    input_shape: ``[B, H, W, C]`` of the model's input (traces the layer order of PyTorch
      files).
    ema: the EMA parameters (what the authors sampled with); False: the raw ones.
    ladder: the config's noise ladder, which a PyTorch file's ``sigmas`` buffer must equal;
      None: not checked.

  Raises:
    ReleasedCheckpointError: unreadable file, or one that does not fit ``template`` or
      ``ladder``.
  """
  fmt, state = _read(path)
  order = top_level_call_order(model, input_shape) if fmt == PYTORCH else None
  params, step = _params_of(fmt, state, path, model, _flatten(flax.core.unfreeze(template)),
                            order, ema, ladder)
  return Released(params=params, step=step, format=fmt, ema=ema)


def load_raw_and_ema(path: str, model: nn.Module, template: Params, input_shape: Sequence[int],
                     *, ema: bool = True,
                     ladder: Optional[NoiseLadder] = None) -> Tuple[Released, Released]:
  """``(raw, averaged)``: both parameter sets of one file, read once (see :func:`load`); with
  ``ema=False`` the EMA parameters are not read and ``averaged`` is ``raw``."""
  fmt, state = _read(path)
  order = top_level_call_order(model, input_shape) if fmt == PYTORCH else None
  flat_template = _flatten(flax.core.unfreeze(template))
  params, step = _params_of(fmt, state, path, model, flat_template, order, False, ladder)
  raw = Released(params=params, step=step, format=fmt, ema=False)
  if not ema:
    return raw, raw
  # The file's ladder was checked with the raw parameters.
  averaged, _ = _params_of(fmt, state, path, model, flat_template, order, True, None)
  return raw, Released(params=averaged, step=step, format=fmt, ema=True)
