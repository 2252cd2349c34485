"""Tests of checkpoints.py: exact round trips, retention, resuming from the newest of two
stores, and the failure modes (incompatible target, corrupted or half-written checkpoints,
unwritable workdir), plus restoring onto a 4-device mesh in a subprocess."""

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from infra import checkpoints
from infra.checkpoints import (CheckpointError, CheckpointStore, CorruptCheckpointError,
                         IncompatibleCheckpointError)
from tests.runs import REPO

BIG = 512  # hidden width giving arrays over OCDBT's 1 KiB inline limit (a data file)
# Orbax leaves un-awaited read coroutines behind when a data file is broken; they are
# reported as unraisable exceptions once the CorruptCheckpointError has been raised.
orbax_read_noise = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@flax.struct.dataclass
class TrainState:
  """Stand-in for losses.TrainState with the same kinds of leaves."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array


def make_state(seed: int, features: int = 8, typed_key: bool = False,
               count: int = 2) -> TrainState:
  """A train state shaped like a two-layer MLP's with an Adam optimizer state.

  Every float leaf is seeded noise (so different seeds differ everywhere), built without
  compiling anything; ``count`` is Adam's step count and the state's step.
  """
  rs = np.random.RandomState(seed)

  def noise(shape):
    return jnp.asarray(rs.standard_normal(shape).astype(np.float32))

  def mlp_like():
    return {"Dense_0": {"bias": noise((features,)), "kernel": noise((4, features))},
            "Dense_1": {"bias": noise((3,)), "kernel": noise((features, 3))}}

  params = mlp_like()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  # (EmptyState(), (ScaleByAdamState(count, mu, nu), EmptyState())): namedtuples and
  # empty tuples, like any optax state.
  opt_state = jax.tree.map(
      lambda s: jnp.asarray(count, s.dtype) if s.ndim == 0 else noise(s.shape),
      jax.eval_shape(tx.init, params))
  rng = jax.random.key(seed + 100) if typed_key else jax.random.PRNGKey(seed + 100)
  return TrainState(step=jnp.int32(count), params=params, opt_state=opt_state,
                    ema_params=mlp_like(), rng=rng)


def _raw(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(x))
  return np.asarray(x)


def assert_states_equal(a, b):
  """Same tree structure, and every leaf has the same dtype, shape and bits."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    name = jax.tree_util.keystr(path)
    assert x.dtype == y.dtype, name
    assert x.shape == y.shape, name
    np.testing.assert_array_equal(_raw(x), _raw(y), err_msg=name)


def tree_hash(path: str) -> str:
  """Hash of every file name and content under ``path`` (detects any change on disk)."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    h.update(os.path.relpath(root, path).encode())
    for f in sorted(files):
      h.update(f.encode())
      with open(os.path.join(root, f), "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _data_file(step_dir: str) -> str:
  """The file holding the array chunks of a checkpoint (its largest file for arrays over
  OCDBT's 1 KiB inline limit; smaller arrays live inside the b-tree nodes)."""
  data_dir = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  files = [os.path.join(data_dir, f) for f in os.listdir(data_dir)]
  return max(files, key=os.path.getsize)


def _run_python(script: str, env_extra: Dict[str, str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO,
             **env_extra)
  return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=240)


# ------------------------------------------------------------------------------------------
# Round trips and retention


@pytest.mark.parametrize("typed_key", [False, True])
def test_round_trip_into_fresh_target_is_exact(tmp_path, typed_key):
  saved = make_state(seed=1, typed_key=typed_key)
  fresh = make_state(seed=2, typed_key=typed_key, count=0)
  with CheckpointStore(str(tmp_path / "ckpt")) as store:
    store.save(2, saved)
    restored = store.restore(2, fresh)
    abstract = jax.eval_shape(lambda: make_state(seed=2, typed_key=typed_key))
    restored_from_abstract = store.restore(2, abstract)
  assert_states_equal(restored, saved)
  assert_states_equal(restored_from_abstract, saved)
  # The fresh target differs everywhere checked, so equality above is not vacuous.
  assert not np.array_equal(_raw(fresh.rng), _raw(saved.rng))
  assert not np.array_equal(fresh.params["Dense_0"]["kernel"], saved.params["Dense_0"]["kernel"])
  assert int(restored.opt_state[1][0].count) == 2


def test_retention_keep_all_and_keep_one(tmp_path):
  states = {step: make_state(seed=step, count=0) for step in (1, 2, 3)}
  keep_all = CheckpointStore(str(tmp_path / "all"))
  keep_one = CheckpointStore(str(tmp_path / "one"), max_to_keep=1)
  for step, state in states.items():
    keep_all.save(step, state)
    keep_one.save(step, state)
  assert keep_all.all_steps() == [1, 2, 3]
  assert sorted(os.listdir(tmp_path / "all")) == ["1", "2", "3"]
  assert keep_one.all_steps() == [3] and keep_one.latest_step() == 3
  assert sorted(os.listdir(tmp_path / "one")) == ["3"]
  assert_states_equal(keep_all.restore(1, states[2]), states[1])
  assert_states_equal(keep_one.restore(3, states[1]), states[3])
  # Saving a step the store already holds (or an older one) is refused, not skipped.
  with pytest.raises(CheckpointError, match="already holds step 3"):
    keep_one.save(3, states[3])
  with pytest.raises(CheckpointError, match="already holds step 3"):
    keep_all.save(2, states[2])
  keep_all.close()
  keep_one.close()


def test_restore_latest_picks_newest_across_stores(tmp_path):
  snaps = CheckpointStore(str(tmp_path / "checkpoints"))
  meta = CheckpointStore(str(tmp_path / "checkpoints-meta"), max_to_keep=1)
  target = make_state(seed=0, count=0)
  assert checkpoints.restore_latest([snaps, meta], target) is None
  assert not os.path.exists(tmp_path / "checkpoints")  # reading creates nothing

  states = {step: make_state(seed=step, count=0) for step in (10, 15, 20, 25)}
  snaps.save(10, states[10])
  meta.save(15, states[15])
  assert_states_equal(checkpoints.restore_latest([snaps, meta], target), states[15])
  snaps.save(20, states[20])
  assert_states_equal(checkpoints.restore_latest([snaps, meta], target), states[20])
  meta.save(25, states[25])
  assert_states_equal(checkpoints.restore_latest([snaps, meta], target), states[25])
  assert meta.all_steps() == [25]
  snaps.close()
  meta.close()


# ------------------------------------------------------------------------------------------
# Failure modes


@pytest.mark.parametrize("target_kwargs, path, fragments", [
    (dict(features=16), "params/Dense_0/bias",
     ["shape (8,) float32 in the checkpoint", "shape (16,) float32 in the target"]),
    (dict(typed_key=True), "rng",
     ["shape (2,) uint32 in the checkpoint", "shape () key<fry> in the target"]),
], ids=["wider_model", "typed_key"])
def test_incompatible_target_is_reported_and_files_untouched(tmp_path, target_kwargs, path,
                                                             fragments):
  snaps = CheckpointStore(str(tmp_path / "checkpoints"))
  meta = CheckpointStore(str(tmp_path / "checkpoints-meta"), max_to_keep=1)
  snaps.save(1, make_state(seed=1))
  meta.save(2, make_state(seed=2))
  before = tree_hash(str(tmp_path))
  target = make_state(seed=0, **target_kwargs)
  with pytest.raises(IncompatibleCheckpointError) as info:
    snaps.restore(1, target)
  message = str(info.value)
  assert "\n" not in message
  for fragment in [repr(path), os.path.join(snaps.directory, "1"), "fresh workdir", *fragments]:
    assert fragment in message
  # No fallback to another checkpoint: the config does not match the workdir.
  with pytest.raises(IncompatibleCheckpointError, match="checkpoints-meta/2"):
    checkpoints.restore_latest([snaps, meta], target)
  assert tree_hash(str(tmp_path)) == before
  snaps.close()
  meta.close()


def test_target_with_missing_or_extra_leaves_is_incompatible(tmp_path):
  state = make_state(seed=1)
  with CheckpointStore(str(tmp_path / "c")) as store:
    store.save(1, state)
    bigger = state.replace(params={**state.params, "Dense_2": {"bias": jnp.zeros(3)}})
    with pytest.raises(IncompatibleCheckpointError, match="has no 'params/Dense_2/bias'"):
      store.restore(1, bigger)
    smaller = state.replace(ema_params={"Dense_0": state.ema_params["Dense_0"]})
    with pytest.raises(IncompatibleCheckpointError, match="'ema_params/Dense_1/bias'.*lacks"):
      store.restore(1, smaller)


@orbax_read_noise
@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupted_checkpoint_is_detected(tmp_path, damage):
  states = {step: make_state(seed=step, features=BIG) for step in (1, 2)}
  store = CheckpointStore(str(tmp_path / "c"))
  for step, state in states.items():
    store.save(step, state)
  victim = _data_file(os.path.join(store.directory, "2"))
  with open(victim, "rb") as f:
    data = bytearray(f.read())
  if damage == "flip_byte":
    data[len(data) // 2] ^= 0xFF
  else:
    data = data[:len(data) // 2]
  with open(victim, "wb") as f:
    f.write(bytes(data))
  before = tree_hash(store.directory)
  with pytest.raises(CorruptCheckpointError) as info:
    store.restore(2, states[1])
  assert os.path.join(store.directory, "2") in str(info.value)
  if damage == "flip_byte":
    # Orbax reads such a flipped byte without error (zstd frames carry no checksum);
    # only the CRC-32s in the metadata catch it.
    assert "fails its CRC-32 check" in str(info.value)
  assert "\n" not in str(info.value)
  assert tree_hash(store.directory) == before
  assert_states_equal(store.restore(1, states[2]), states[1])
  store.close()


def test_corrupted_metadata_is_detected(tmp_path):
  state = make_state(seed=1)
  with CheckpointStore(str(tmp_path / "c")) as store:
    store.save(1, state)
    with open(os.path.join(store.directory, "1", "meta", "metadata"), "w") as f:
      f.write("{not json")
    with pytest.raises(CorruptCheckpointError, match="metadata is unreadable"):
      store.restore(1, state)


@orbax_read_noise
def test_restore_latest_falls_back_past_corrupted_checkpoint(tmp_path, caplog):
  snaps = CheckpointStore(str(tmp_path / "checkpoints"))
  meta = CheckpointStore(str(tmp_path / "checkpoints-meta"), max_to_keep=1)
  states = {step: make_state(seed=step, features=BIG) for step in (10, 20)}
  snaps.save(10, states[10])
  meta.save(20, states[20])
  victim = _data_file(os.path.join(meta.directory, "20"))
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  snaps_before = tree_hash(snaps.directory)

  with caplog.at_level(logging.WARNING, logger="checkpoints"):
    restored = checkpoints.restore_latest([snaps, meta], states[20])
  assert_states_equal(restored, states[10])
  assert any("checkpoints-meta/20" in r.getMessage() for r in caplog.records)
  assert tree_hash(snaps.directory) == snaps_before
  # The corrupted checkpoint is kept under another name, so the resumed run can save
  # step 20 again (the name must not parse as a step).
  moved = [n for n in os.listdir(meta.directory) if n.startswith("20.corrupt-")]
  assert len(moved) == 1 and meta.all_steps() == []
  meta.save(20, states[20])
  assert meta.all_steps() == [20]
  snaps.close()
  meta.close()


@orbax_read_noise
def test_restore_latest_raises_when_all_checkpoints_are_corrupted(tmp_path):
  state = make_state(seed=1, features=BIG)
  with CheckpointStore(str(tmp_path / "c")) as store:
    store.save(1, state)
    os.remove(_data_file(os.path.join(store.directory, "1")))
    before = tree_hash(store.directory)
    with pytest.raises(CorruptCheckpointError, match="all 1 checkpoints"):
      checkpoints.restore_latest([store], state)
    assert tree_hash(store.directory) == before


def test_leftover_temporary_directory_is_ignored(tmp_path):
  states = {step: make_state(seed=step, features=BIG) for step in (1, 2)}
  directory = str(tmp_path / "c")
  with CheckpointStore(directory) as store:
    store.save(1, states[1])
  # A save of step 2 that died halfway: a copy with a truncated data file under orbax's
  # temporary name.
  tmp_dir = os.path.join(directory, "2.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(directory, "1"), tmp_dir)
  os.truncate(_data_file(tmp_dir), 10)
  with CheckpointStore(directory) as store:
    assert store.all_steps() == [1]
    assert_states_equal(checkpoints.restore_latest([store], states[2]), states[1])
    store.save(2, states[2])
    assert store.all_steps() == [1, 2]
    assert_states_equal(store.restore(2, states[1]), states[2])
  assert sorted(os.listdir(directory)) == ["1", "2"]


def test_process_killed_mid_save_leaves_previous_checkpoint_restorable(tmp_path):
  """SIGKILL right before orbax commits step 2 (all its files written to the temporary
  directory), the worst moment for a rename-based save."""
  directory = str(tmp_path / "c")
  script = f"""
    import os, signal
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from infra import checkpoints
    store = checkpoints.CheckpointStore({directory!r})
    store.save(1, {{"w": jnp.ones((256, 256))}})
    commit = atomicity.AtomicRenameTemporaryPath.finalize
    async def killed_before_commit(self):
      if self._final_path.name == "2":
        os.kill(os.getpid(), signal.SIGKILL)
      return await commit(self)
    atomicity.AtomicRenameTemporaryPath.finalize = killed_before_commit
    store.save(2, {{"w": jnp.full((256, 256), 2.0)}})
  """
  result = _run_python(script, {})
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert sorted(os.listdir(directory)) == ["1", "2.orbax-checkpoint-tmp"]
  target = {"w": jnp.zeros((256, 256))}
  with CheckpointStore(directory) as store:
    assert store.all_steps() == [1]
    np.testing.assert_array_equal(checkpoints.restore_latest([store], target)["w"], 1.0)
    store.save(2, {"w": jnp.full((256, 256), 2.0)})
    np.testing.assert_array_equal(store.restore(2, target)["w"], 2.0)


def test_save_into_an_unwritable_directory_fails_clearly(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  # A directory under a regular file cannot be created, even by root.
  with pytest.raises(CheckpointError, match="failed"):
    CheckpointStore(str(blocker / "sub")).save(1, make_state(seed=1))


def test_non_jax_leaves_are_rejected(tmp_path):
  with CheckpointStore(str(tmp_path / "c")) as store:
    with pytest.raises(CheckpointError, match="'w' is a ndarray, not a jax.Array"):
      store.save(1, {"w": np.ones(3)})
    store.save(1, {"w": jnp.ones(3)})
    with pytest.raises(CheckpointError, match="'w' is a int, not a jax.Array"):
      store.restore(1, {"w": 0})


# ------------------------------------------------------------------------------------------
# Multi-device


def test_restore_onto_four_device_mesh_keeps_target_sharding(tmp_path):
  script = f"""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from infra import checkpoints
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())

    def make(seed):
      params = {{"w": jax.random.normal(jax.random.PRNGKey(seed), (8, 3)),
                "b": jnp.arange(8.0) + seed}}
      state = {{"step": jnp.int32(seed), "params": params, "ema": params,
               "opt_state": optax.adam(1e-3).init(params), "rng": jax.random.key(seed),
               "raw_rng": jax.random.PRNGKey(seed)}}
      shardings = jax.tree.map(lambda _: replicated, state)
      shardings["params"]["b"] = NamedSharding(mesh, P("data"))  # one sharded leaf too
      return jax.device_put(state, shardings)

    saved, target = make(1), make(0)
    with checkpoints.CheckpointStore({str(tmp_path / "c")!r}) as store:
      store.save(1, saved)
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
      for tgt in (target, abstract):
        restored = store.restore(1, tgt)
        assert jax.tree.structure(restored) == jax.tree.structure(saved)
        for r, s, t in zip(jax.tree.leaves(restored), jax.tree.leaves(saved),
                           jax.tree.leaves(target)):
          assert r.sharding == t.sharding, (r.sharding, t.sharding)
          assert r.dtype == s.dtype
          raw = jax.random.key_data if jax.dtypes.issubdtype(r.dtype,
                                                             jax.dtypes.prng_key) else np.asarray
          np.testing.assert_array_equal(np.asarray(raw(r)), np.asarray(raw(s)))
    print("OK")
  """
  result = _run_python(script, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def _poisoned(state, value=np.nan):
  """``state`` with one parameter entry set to ``value``."""
  leaves, treedef = jax.tree_util.tree_flatten(state.params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(value)
  return state.replace(params=jax.tree_util.tree_unflatten(treedef, leaves))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_save_refuses_non_finite_state(tmp_path, value):
  with CheckpointStore(str(tmp_path / "c")) as store:
    with pytest.raises(checkpoints.NonFiniteStateError, match="refusing to save step 3.*params"):
      store.save(3, _poisoned(make_state(seed=0), value))
    assert store.all_steps() == []
    assert not os.path.exists(store.step_dir(3))


def test_non_finite_leaves_names_the_leaves():
  state = make_state(seed=0)
  assert checkpoints.non_finite_leaves(state) == []
  bad = checkpoints.non_finite_leaves(_poisoned(state))
  assert len(bad) == 1 and bad[0].startswith("params/")


def test_restore_latest_skips_non_finite_checkpoint(tmp_path, monkeypatch, caplog):
  """A NaN checkpoint written before saves refused them is skipped, renamed, and saved over."""
  good, bad = make_state(seed=1), _poisoned(make_state(seed=2))
  with CheckpointStore(str(tmp_path / "c")) as store:
    store.save(10, good)
    with monkeypatch.context() as patch:
      patch.setattr(checkpoints, "non_finite_leaves", lambda tree: [])
      store.save(20, bad)
    with caplog.at_level(logging.WARNING, logger="checkpoints"):
      restored = checkpoints.restore_latest([store], good)
    assert_states_equal(restored, good)
    assert "non-finite" in caplog.text and "/20" in caplog.text
    assert store.all_steps() == [10]
    assert [n for n in os.listdir(store.directory) if n.startswith("20.nonfinite-")]
    store.save(20, good)
    assert store.all_steps() == [10, 20]


def test_restore_latest_raises_when_every_checkpoint_is_non_finite(tmp_path, monkeypatch):
  bad = _poisoned(make_state(seed=2))
  with CheckpointStore(str(tmp_path / "c")) as store:
    with monkeypatch.context() as patch:
      patch.setattr(checkpoints, "non_finite_leaves", lambda tree: [])
      store.save(5, bad)
    with pytest.raises(CheckpointError, match="all 1 checkpoints.*non-finite"):
      checkpoints.restore_latest([store], bad)
    assert store.all_steps() == [5]
