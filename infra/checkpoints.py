"""Checkpoint I/O for training runs (orbax-checkpoint).

A training workdir holds two checkpoint directories, each managed by one
:class:`CheckpointStore`:

* ``checkpoints/``: periodic snapshots, all kept (``max_to_keep=None``);
* ``checkpoints-meta/``: the preemption checkpoint, only the newest kept (``max_to_keep=1``).

A restarted run resumes from the newest step across both (:func:`restore_latest`).

Format. Each step directory ``<dir>/<step>/`` holds two orbax items:

* ``state``: the train-state leaves as a nested dict keyed by their pytree path, so the
  checkpoint does not depend on Python classes (a ``flax.struct.dataclass``, optax
  namedtuples and empty states all become plain keys, e.g. ``opt_state/1/0/mu/Dense_0/bias``);
* ``meta``: JSON listing every leaf's path, shape, dtype and CRC-32 of its bytes. Orbax
  (zstd-compressed zarr chunks without checksums) can return garbled values without an
  error when a data file is damaged; the CRCs catch that.

Typed PRNG keys (``jax.random.key``) are stored as their raw key data and re-wrapped with the
target's key implementation; raw ``uint32[2]`` keys are stored as they are. The two kinds
are not interchangeable: restoring one into the other is reported as incompatible.

Safety. Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it when
complete, so a crash mid-save leaves only a temporary directory that step listings
ignore and the next :class:`CheckpointStore` deletes; a save never modifies existing
checkpoints (retention deletes the oldest ones only once the new one is complete).
:meth:`CheckpointStore.save` is synchronous: it returns once the checkpoint is on disk,
and no background thread outlives :meth:`CheckpointStore.close`.
Restoring into an incompatible target raises :class:`IncompatibleCheckpointError` before
reading any array; a damaged checkpoint raises :class:`CorruptCheckpointError`. Neither
touches files.

Finiteness: :meth:`CheckpointStore.save` refuses a state holding NaN or infinite values
(:class:`NonFiniteStateError`), so a diverged run never leaves a checkpoint to resume from.

Fallback policy of :func:`restore_latest`: a corrupted checkpoint, or a non-finite one, is
skipped (with a logged warning) in favour of the next newest one, across both stores; once an
older checkpoint has restored, each skipped one is renamed to ``<step>.corrupt-<UTC time>``
or ``<step>.nonfinite-<UTC time>`` (kept for inspection, ignored by orbax) so that the resumed
run can save that step again (process 0 renames, the others wait). An incompatible checkpoint
is never skipped: it means the config does not match the workdir.

Leaves and sharding. Saved leaves must be ``jax.Array`` s; target leaves may also be
``jax.ShapeDtypeStruct`` s (e.g. from ``jax.eval_shape``). Restored arrays get the sharding
of the corresponding target leaf (a struct without one lands on the first local device).
CRCs are computed on the host from one replica of each fully replicated (or fully
addressable) leaf; leaves sharded across processes are not checksummed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any

_FORMAT_VERSION = 1
_SPACE_MARGIN = 1 << 20  # bytes kept free beyond a checkpoint's size (metadata, logs)
_STATE = "state"
_META = "meta"

_log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or read; the message says what to do."""


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint's tree structure, shapes or dtypes differ from the target's."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files are missing, truncated or garbled."""


class NonFiniteStateError(CheckpointError):
  """A state to save, or a restored checkpoint, holds NaN or infinite values."""


# ----------------------------------------------------------------------------------------
# Pytree <-> named leaves


def _key_name(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def _is_typed_key(leaf: Any) -> bool:
  return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _named_leaves(tree: PyTree) -> Tuple[List[Tuple[str, ...]], List[Any], Any]:
  """Returns (path parts of each leaf, leaves, treedef); rejects ambiguous names."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  parts = [tuple(_key_name(k) for k in path) for path, _ in flat]
  if len(set(parts)) != len(parts):
    raise CheckpointError(
        "two leaves of the state have the same path name; rename the colliding keys")
  return parts, [leaf for _, leaf in flat], treedef


def _nest(parts: Sequence[Tuple[str, ...]], values: Sequence[Any]) -> Dict[str, Any]:
  nested: Dict[str, Any] = {}
  for p, v in zip(parts, values):
    node = nested
    for k in p[:-1]:
      node = node.setdefault(k, {})
    node[p[-1]] = v
  return nested


def _unnest(nested: Dict[str, Any], parts: Sequence[Tuple[str, ...]]) -> List[Any]:
  out = []
  for p in parts:
    node = nested
    for k in p:
      node = node[k]
    out.append(node)
  return out


def _check_leaf_types(names: Sequence[str], leaves: Sequence[Any], kinds: Tuple[type, ...],
                      what: str) -> None:
  for name, leaf in zip(names, leaves):
    if not isinstance(leaf, kinds):
      raise CheckpointError(
          f"{what} leaf {name!r} is a {type(leaf).__name__}, not a jax.Array; convert it "
          "with jnp.asarray (or make the field static with pytree_node=False)")


def _crc32(x: jax.Array) -> Optional[int]:
  """CRC-32 of one replica's bytes; None for an array sharded across processes."""
  if x.is_fully_replicated:
    x = x.addressable_data(0)
  elif not x.is_fully_addressable:
    return None
  return zlib.crc32(np.ascontiguousarray(np.asarray(x)).view(np.uint8).reshape(-1))


def _leaf_spec(leaf: Any) -> Dict[str, Any]:
  """Shape and dtype of a state or target leaf as recorded in the checkpoint metadata."""
  return {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}


def _key_impl_name(leaf: jax.Array) -> Optional[str]:
  """Name of a typed key's PRNG implementation (``wrap_key_data``'s ``impl``), else None."""
  return str(jax.random.key_impl(leaf)) if _is_typed_key(leaf) else None


def _stored_value(leaf: jax.Array) -> jax.Array:
  """The array orbax writes for a state leaf (raw data for typed keys)."""
  return jax.random.key_data(leaf) if _is_typed_key(leaf) else leaf


def _abstract_stored(leaf: Any) -> jax.ShapeDtypeStruct:
  """Orbax restore target for one target leaf: stored shape/dtype, target's sharding."""
  if isinstance(leaf, jax.Array):
    stored = _stored_value(leaf)
    return jax.ShapeDtypeStruct(stored.shape, stored.dtype, sharding=stored.sharding)
  sharding = leaf.sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if _is_typed_key(leaf):
    # Key data has trailing dimensions; a sharding spec shorter than the rank
    # replicates them, so the key array's sharding applies unchanged.
    leaf = jax.eval_shape(jax.random.key_data, leaf)
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _from_stored(restored: jax.Array, key_impl: Optional[str]) -> jax.Array:
  """Re-wraps restored key data as a typed key if ``key_impl`` (recorded at save time) is
  set; the recorded key dtype matched the target's, so this is the target's impl too."""
  return restored if key_impl is None else jax.random.wrap_key_data(restored, impl=key_impl)


@jax.jit
def _finite_flags(leaves: List[jax.Array]) -> List[jax.Array]:
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def non_finite_leaves(tree: PyTree) -> List[str]:
  """Path names (as in the checkpoint metadata) of the floating-point leaves of ``tree`` that
  hold a NaN or an infinity; empty if every value is finite.

  One jitted reduction per leaf, on the leaves' devices: only the flags travel to the host.
  """
  parts, leaves, _ = _named_leaves(tree)
  floats = [(p, x) for p, x in zip(parts, leaves)
            if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not floats:
    return []
  flags = jax.device_get(_finite_flags([x for _, x in floats]))
  return ["/".join(p) for (p, _), ok in zip(floats, flags) if not ok]


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200] if text else ''}"


# ----------------------------------------------------------------------------------------
# Checkpoint stores


class CheckpointStore:
  """The checkpoints of one directory, ``<directory>/<step>/``.

  Args:
    directory: where the step directories live; created on the first save.
    max_to_keep: number of newest checkpoints kept after each save; None keeps all.
    writer: False for a reader beside a possibly running writer (evaluating or sampling while
      training goes on): it cannot save, and it leaves the temporary directory of a checkpoint
      being written alone instead of deleting it as a crashed save's leftover.

  The orbax manager is created on first use; :meth:`close` (or a ``with`` block) releases
  it. Reading a store whose directory does not exist creates nothing.
  """

  def __init__(self, directory: str, max_to_keep: Optional[int] = None, writer: bool = True):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be None or >= 1, got {max_to_keep}")
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self.writer = writer
    self._manager: Optional[ocp.CheckpointManager] = None

  def __enter__(self) -> "CheckpointStore":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def __repr__(self) -> str:
    return (f"CheckpointStore({self.directory!r}, max_to_keep={self.max_to_keep}, "
            f"writer={self.writer})")

  def _get_manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self.max_to_keep,
          create=False,
          cleanup_tmp_directories=self.writer,
          enable_async_checkpointing=False)
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                         _META: ocp.JsonCheckpointHandler()})
    return self._manager

  def step_dir(self, step: int) -> str:
    """Directory of the checkpoint of ``step``."""
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> List[int]:
    """Steps of the complete checkpoints on disk, ascending."""
    if not os.path.isdir(self.directory):
      return []
    manager = self._get_manager()
    manager.reload()  # another process (or a quarantine) may have changed the directory
    return sorted(manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """Newest complete checkpoint's step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: PyTree) -> None:
    """Writes ``state`` as the checkpoint of ``step`` and waits until it is on disk.

    Then deletes the oldest checkpoints beyond ``max_to_keep``.

    Args:
      step: training step, newer than every checkpoint in this store.
      state: pytree of ``jax.Array`` s (PRNG keys may be typed or raw ``uint32``).

    Raises:
      CheckpointError: if the store already holds ``step`` or a newer one (orbax would
        otherwise skip the save or delete the new checkpoint), or if writing fails.
    """
    if not self.writer:
      raise CheckpointError(f"cannot save step {step} in {self.directory}: opened read-only")
    step = int(step)
    latest = self.latest_step()
    if latest is not None and latest >= step:
      raise CheckpointError(
          f"cannot save step {step} in {self.directory}: it already holds step {latest}; "
          "resume from the newest checkpoint (restore_latest) or use a fresh workdir")
    parts, leaves, _ = _named_leaves(state)
    _check_leaf_types(["/".join(p) for p in parts], leaves, (jax.Array,), "state")
    bad = non_finite_leaves(state)
    if bad:
      raise NonFiniteStateError(
          f"refusing to save step {step} to {self.directory}: {bad[0]} holds non-finite values"
          + (f" (and {len(bad) - 1} more leaves)" if len(bad) > 1 else ""))
    values = [_stored_value(x) for x in leaves]
    meta = {
        "format_version": _FORMAT_VERSION,
        "leaves": [dict(path="/".join(p), crc32=_crc32(v), key_impl=_key_impl_name(x),
                        **_leaf_spec(x))
                   for p, x, v in zip(parts, leaves, values)],
    }
    items = _nest(parts, values)
    try:
      os.makedirs(self.directory, exist_ok=True)
      self._check_free_space(step, values)
      manager = self._get_manager()
      manager.save(step, args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardSave(items), _META: ocp.args.JsonSave(meta)}),
                   force=True)
      manager.wait_until_finished()
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(
          f"saving step {step} to {self.directory} failed ({_first_line(e)}); "
          "check free disk space and permissions of the workdir") from e

  def _check_free_space(self, step: int, values: Sequence[jax.Array]) -> None:
    """Refuses a save that cannot fit, before orbax starts writing.

    A write that fails halfway leaves only a temporary directory, but orbax's worker threads
    report it at length; checking first keeps the common case (a disk already nearly full) to
    one line. The estimate is the uncompressed size: an upper bound of what orbax writes.
    """
    need = sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in values) + _SPACE_MARGIN
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise CheckpointError(
          f"not enough free disk space to save step {step} to {self.directory}: a checkpoint "
          f"needs up to {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free; free some "
          "space (e.g. older snapshots) and rerun to resume from the newest checkpoint")

  def _read_meta(self, step: int) -> Dict[str, Any]:
    try:
      meta = self._get_manager().restore(
          step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META]
      if meta["format_version"] != _FORMAT_VERSION:
        raise ValueError(f"unknown format_version {meta['format_version']}")
      return {leaf["path"]: {"shape": list(leaf["shape"]), "dtype": str(leaf["dtype"]),
                             "crc32": leaf["crc32"], "key_impl": leaf["key_impl"]}
              for leaf in meta["leaves"]}
    except Exception as e:
      raise CorruptCheckpointError(
          f"checkpoint {self.step_dir(step)} is corrupted: its metadata is unreadable "
          f"({_first_line(e)}); move it aside to resume from an older checkpoint") from e

  def restore(self, step: int, target: PyTree) -> PyTree:
    """Reads the checkpoint of ``step`` into the structure of ``target``.

    Args:
      step: a step in :meth:`all_steps`.
      target: pytree like the saved state, of ``jax.Array`` s or ``jax.ShapeDtypeStruct`` s
        (only its structure, shapes, dtypes and shardings are used).

    Returns:
      A pytree with ``target``'s structure whose arrays have the target leaves' shardings.

    Raises:
      IncompatibleCheckpointError: leaf paths, shapes or dtypes differ from ``target``'s
        (checked before reading any array).
      CorruptCheckpointError: files are missing, unreadable or fail their CRC check.
    """
    step = int(step)
    where = self.step_dir(step)
    if step not in self.all_steps():
      raise CheckpointError(
          f"no complete checkpoint of step {step} in {self.directory} "
          f"(steps: {self.all_steps()}); pass one of those steps")
    stored = self._read_meta(step)
    parts, leaves, treedef = _named_leaves(target)
    names = ["/".join(p) for p in parts]
    _check_leaf_types(names, leaves, (jax.Array, jax.ShapeDtypeStruct), "target")
    _check_compatible(where, stored, names, leaves)
    abstract = _nest(parts, [_abstract_stored(x) for x in leaves])
    try:
      restored = self._get_manager().restore(
          step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)}))[_STATE]
      values = _unnest(restored, parts)
    except Exception as e:
      raise CorruptCheckpointError(
          f"checkpoint {where} is corrupted or unreadable ({_first_line(e)}); "
          "move it aside to resume from an older checkpoint") from e
    for name, value in zip(names, values):
      expected = stored[name]["crc32"]
      actual = _crc32(value)
      if expected is not None and actual is not None and expected != actual:
        raise CorruptCheckpointError(
            f"checkpoint {where} is corrupted: {name} fails its CRC-32 check; "
            "move it aside to resume from an older checkpoint")
    return jax.tree_util.tree_unflatten(
        treedef, [_from_stored(v, stored[name]["key_impl"]) for name, v in zip(names, values)])

  def quarantine(self, step: int, reason: str = "corrupt") -> str:
    """Renames the checkpoint of ``step`` to ``<step>.<reason>-<UTC time>``; returns the path.

    The renamed directory is no longer a step of this store, so ``step`` can be saved again.
    """
    src = self.step_dir(step)
    dst = f"{src}.{reason}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    os.rename(src, dst)
    if self._manager is not None:
      self._manager.reload()
    return dst

  def close(self) -> None:
    """Releases the orbax manager (idempotent); the store can be used again afterwards."""
    if self._manager is not None:
      self._manager.close()
      self._manager = None


def _check_compatible(where: str, stored: Dict[str, Dict[str, Any]], names: Sequence[str],
                      leaves: Sequence[Any]) -> None:
  """Raises IncompatibleCheckpointError at the first leaf differing from the checkpoint."""
  fix = "use a fresh workdir or the config this checkpoint was written with"
  for name, leaf in zip(names, leaves):
    if name not in stored:
      raise IncompatibleCheckpointError(
          f"checkpoint {where} does not match the state: it has no {name!r} "
          f"(target shape {tuple(leaf.shape)}); {fix}")
    want, got = _leaf_spec(leaf), stored[name]
    if want["shape"] != got["shape"] or want["dtype"] != got["dtype"]:
      raise IncompatibleCheckpointError(
          f"checkpoint {where} does not match the state at {name!r}: shape "
          f"{tuple(got['shape'])} {got['dtype']} in the checkpoint, shape "
          f"{tuple(want['shape'])} {want['dtype']} in the target; {fix}")
  extra = sorted(set(stored) - set(names))
  if extra:
    raise IncompatibleCheckpointError(
        f"checkpoint {where} does not match the state: it has {extra[0]!r} "
        f"(shape {tuple(stored[extra[0]]['shape'])}) which the target lacks; {fix}")


def restore_latest(stores: Sequence[CheckpointStore], target: PyTree) -> Optional[PyTree]:
  """Restores the newest usable checkpoint across ``stores`` into ``target``'s structure.

  Candidates are tried newest step first (on a tie, the earlier store in ``stores``).
  A corrupted one, or one holding non-finite values (written before saves refused them), is
  skipped with a logged warning; once an older one restores, the skipped ones are quarantined
  as ``<step>.corrupt-*`` / ``<step>.nonfinite-*`` (see :meth:`CheckpointStore.quarantine`), so
  the resumed run can save those steps again.

  Returns:
    The restored state, or None if no store holds a checkpoint.

  Raises:
    IncompatibleCheckpointError: the newest readable checkpoint does not fit ``target``.
    CorruptCheckpointError: every checkpoint is corrupted (nothing is renamed then).
    CheckpointError: every checkpoint is corrupted or non-finite, some of them non-finite.
  """
  candidates = sorted(((step, i) for i, store in enumerate(stores)
                       for step in store.all_steps()), key=lambda c: (-c[0], c[1]))
  skipped: List[Tuple[CheckpointStore, int, str, str]] = []
  for step, i in candidates:
    store = stores[i]
    try:
      state = store.restore(step, target)
    except CorruptCheckpointError as e:
      _log.warning("skipping corrupted checkpoint: %s", e)
      skipped.append((store, step, "corrupt", str(e)))
      continue
    bad = non_finite_leaves(state)
    if bad:
      why = f"checkpoint {store.step_dir(step)} holds non-finite values ({bad[0]})"
      _log.warning("skipping %s", why)
      skipped.append((store, step, "nonfinite", why))
      continue
    for bad_store, bad_step, reason, _ in skipped:
      # One process renames; the others wait for it so that their next listing agrees.
      if jax.process_index() == 0:
        moved = bad_store.quarantine(bad_step, reason)
        _log.warning("moved unusable checkpoint %s to %s", bad_store.step_dir(bad_step), moved)
    if skipped and jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints.restore_latest quarantine")
    _log.info("restored step %d from %s", step, store.step_dir(step))
    return state
  if skipped:
    kinds = {reason for _, _, reason, _ in skipped}
    error = CorruptCheckpointError if kinds == {"corrupt"} else CheckpointError
    raise error(
        f"all {len(skipped)} checkpoints in {[s.directory for s in stores]} are unusable "
        f"(newest: {skipped[0][3]}); start again in a fresh workdir")
  return None


# The two stores of a training workdir (see the module docstring).
SNAPSHOTS = "checkpoints"
PREEMPTION = "checkpoints-meta"


def find_checkpoint(workdir: str, checkpoint: Optional[str] = None
                    ) -> Tuple[CheckpointStore, int, str]:
  """The checkpoint a sampling run asks for: ``(store, step, the workdir that trained it)``.

  Args:
    workdir: a training workdir.
    checkpoint: None for the newest step of either store of ``workdir``; a step number; or the
      path of a step directory (``<other workdir>/checkpoints/<step>``).

  The returned store is open for reading; the caller closes it.

  Raises:
    FileNotFoundError: naming what exists instead.
  """
  if checkpoint and not str(checkpoint).isdigit():
    path = os.path.abspath(str(checkpoint).rstrip(os.sep))
    step_name, store_dir = os.path.basename(path), os.path.dirname(path)
    if not step_name.isdigit() or not os.path.isdir(path):
      raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a checkpoint directory "
                              f"(<workdir>/{SNAPSHOTS}/<step>) nor an existing file (the "
                              "authors' checkpoint_<k> or checkpoint_<k>.pth); pass one, or a "
                              "step number.")
    store = CheckpointStore(store_dir, writer=False)
    if int(step_name) not in store.all_steps():
      store.close()
      raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a complete checkpoint; "
                              f"complete steps there: {store.all_steps() or 'none'}.")
    return store, int(step_name), os.path.dirname(store_dir)
  stores = [CheckpointStore(os.path.join(workdir, name), writer=False)
            for name in (SNAPSHOTS, PREEMPTION)]
  available = {step: store for store in reversed(stores) for step in store.all_steps()}
  step = int(checkpoint) if checkpoint else max(available, default=None)
  chosen = available.get(step)
  for store in stores:
    if store is not chosen:
      store.close()
  if not available:
    raise FileNotFoundError(f"No checkpoint under {workdir}: train first (--mode train with the "
                            "same --config and --workdir), or pass --checkpoint=<path>.")
  if chosen is None:
    raise FileNotFoundError(f"No checkpoint of step {step} under {workdir}; available steps: "
                            f"{sorted(available)}.")
  return chosen, step, workdir
