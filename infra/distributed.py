"""Multi-process runs: starting JAX's distributed runtime from flags, environment or a cluster.

``python main.py ... --multihost`` runs this process as one of several that train (or evaluate)
together over one device mesh (:mod:`devices`). Where it belongs comes from, in this order:

1. the flags ``--coordinator_address=host:port --num_processes=N --process_id=i``, all three;
2. the environment variables ``SCORE_SDE_COORDINATOR_ADDRESS``, ``SCORE_SDE_NUM_PROCESSES`` and
   ``SCORE_SDE_PROCESS_ID``, each read where its flag is not given (a launcher can set them per
   process, so that every process runs the same command line);
3. with none of them set: JAX's cluster auto-detection (SLURM, Open MPI, Cloud TPU, Kubernetes).

Giving any of the three (flag or variable) implies ``--multihost``. Process 0 hosts the
coordinator: ``host`` is process 0's address as the others reach it, ``port`` a free port there.
Every process runs the same command (same config, same workdir on a file system they share).
Cross-process collectives on CPU use Gloo (TCP); GPUs and TPUs keep their own.

Failures (measured with JAX 0.10.2, two CPU processes on one machine):

* Joining: a process that cannot join the run within ``init_timeout_s`` (another process was
  not started, a wrong address or count) prints one ``error:`` line and exits with status 1.
  JAX alone would abort it later with a C++ stack trace saying that "another task died".
* A process dies (crash, ``SIGKILL``, lost host):

  - process k > 0 died: the survivors' next collective fails as soon as its connections close
    (at once on a live host); their run stops with an error, and the exit below ends them
    ``peer_timeout_s / 2`` later with one line, status 1. A survivor that was waiting in a
    barrier of JAX's coordination service instead (part of a checkpoint save; rarely) is
    aborted by JAX once the dead process has missed heartbeats for ``peer_timeout_s``.
  - process 0 died: it hosted the coordinator, so JAX aborts every other process at once from
    its C++ runtime (exit status 134, ``SIGABRT``) with "Terminating process because the JAX
    distributed service detected fatal errors ... another task died" and a stack trace;
    nothing in Python can intercept that.

  So no survivor outlives the dead process by more than about ``peer_timeout_s``.
* Exiting: JAX's shutdown waits for every process and aborts with a stack trace if one never
  comes. Before that, a process that is exiting (finished, or stopped by an error) waits for
  the others at most ``peer_timeout_s / 2``; then it prints one ``error:`` line and exits with
  status 1. The processes of a healthy run reach the end within about a second of each other.

After any failure, start every process again with the same command: training resumes from the
newest checkpoint in the workdir.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Optional, Tuple

import jax

# Environment variables read where the corresponding flag is not given.
ENV_COORDINATOR_ADDRESS = "SCORE_SDE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "SCORE_SDE_NUM_PROCESSES"
ENV_PROCESS_ID = "SCORE_SDE_PROCESS_ID"

DEFAULT_PEER_TIMEOUT_S = 60
DEFAULT_INIT_TIMEOUT_S = 300

# JAX aborts a process that has not joined within its initialization timeout; ours fires this
# much earlier so that the process ends with a readable line instead.
_JAX_GRACE_S = 10

_CLUSTERS = "SLURM, Open MPI, Cloud TPU or Kubernetes"
_HOW = ("pass --coordinator_address=host:port --num_processes=N --process_id=i to every process "
        f"(or set {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or launch "
        f"them under {_CLUSTERS}")

_log = logging.getLogger(__name__)

Settings = Tuple[Optional[str], Optional[int], Optional[int]]


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None) -> Settings:
  """The flags' values, each filled in from its environment variable where it is None.

  Raises:
    ValueError: in one line, if a variable is not a valid value.
  """
  if coordinator_address is None:
    coordinator_address = os.environ.get(ENV_COORDINATOR_ADDRESS) or None
  return (coordinator_address, _int_from_env(num_processes, ENV_NUM_PROCESSES),
          _int_from_env(process_id, ENV_PROCESS_ID))


def _int_from_env(value: Optional[int], name: str) -> Optional[int]:
  if value is not None:
    return value
  text = os.environ.get(name, "").strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def requested(multihost: bool, coordinator_address: Optional[str] = None,
              num_processes: Optional[int] = None, process_id: Optional[int] = None) -> bool:
  """Whether this process is one of several: ``--multihost``, or any process setting given."""
  return multihost or any(v is not None for v in resolve(coordinator_address, num_processes,
                                                          process_id))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *,
               peer_timeout_s: int = DEFAULT_PEER_TIMEOUT_S,
               init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S) -> None:
  """Joins this process to a multi-process run (``jax.distributed.initialize``).

  Must be called before anything initialises a JAX backend (any computation or device query).

  Args:
    coordinator_address, num_processes, process_id: where this process belongs: all three, or
      all None for their environment variables, and failing those JAX's cluster detection.
    peer_timeout_s: a process that sends no heartbeat for this long is declared dead and the
      run stops; an exiting process waits at most half this long for the others.
    init_timeout_s: how long to wait for every process to join.

  Raises:
    ValueError: in one line, saying what to pass, if the settings are incomplete or invalid or
      no cluster is detected without them.
  """
  settings = resolve(coordinator_address, num_processes, process_id)
  _check_timeouts(peer_timeout_s, init_timeout_s)
  if any(v is not None for v in settings):
    address, count, index = _check_explicit(*settings)
    where = f"at {address} as process {index} of {count}"
  else:
    address = count = index = None
    where = "under the detected cluster manager"
  # Gloo is JAX's default CPU collectives today; naming it keeps multi-process CPU runs (the
  # tests) working if that changes. The backend reads it when it is created, after this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")

  joined = _watchdog(init_timeout_s,
                     f"could not join the multi-process run {where} within --init_timeout_s="
                     f"{init_timeout_s} s: start all processes with the same "
                     "--coordinator_address (process 0's host and a free port) and "
                     "--num_processes")
  try:
    jax.distributed.initialize(
        address, count, index, initialization_timeout=init_timeout_s + _JAX_GRACE_S,
        heartbeat_timeout_seconds=peer_timeout_s,
        # Our own exit watchdog (below) fires first; this only bounds JAX's if it does not.
        shutdown_timeout_seconds=peer_timeout_s)
  except (ValueError, TypeError) as e:
    if address is not None:
      raise ValueError(f"cannot start the multi-process run {where}: {e}") from None
    raise ValueError(f"--multihost: no cluster manager detected and no process settings given "
                     f"(JAX: {str(e).strip()}); {_HOW}") from None
  finally:
    joined.set()
  index, count = _process_index_and_count(index, count)
  _log.info("Process %s of %s joined the multi-process run (%s).", index, count, where)
  # Started now: Python may refuse to start threads once it is exiting. The handler that arms it
  # is registered after jax's own, so it runs first, before JAX's shutdown waits for the others.
  exiting = threading.Event()
  wait_s = max(1, peer_timeout_s // 2)
  _watchdog(wait_s, f"process {index} of {count}: not every process reached the end of the run "
            f"within {wait_s} s (--peer_timeout_s={peer_timeout_s} / 2); another one probably "
            "failed or died, see its output. Start all processes again with the same command to "
            "resume from the newest checkpoint.", armed=exiting)
  atexit.register(exiting.set)


def _process_index_and_count(index: Optional[int],
                             count: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
  """This process's place, without initialising a backend (which would wait for the others)."""
  if index is not None:
    return index, count
  try:
    from jax._src.distributed import global_state  # pylint: disable=import-outside-toplevel
    return global_state.process_id, global_state.num_processes
  except (ImportError, AttributeError):  # only for the log and error lines
    return None, None


def _check_timeouts(peer_timeout_s: int, init_timeout_s: int) -> None:
  for name, value in (("peer_timeout_s", peer_timeout_s), ("init_timeout_s", init_timeout_s)):
    if not isinstance(value, int) or value < 2:
      raise ValueError(f"--{name} must be an integer number of seconds >= 2, got {value!r}")


def _check_explicit(address: Optional[str], count: Optional[int],
                    index: Optional[int]) -> Tuple[str, int, int]:
  """All three settings, validated; a one-line ValueError naming what is missing or wrong."""
  names = (("coordinator_address", ENV_COORDINATOR_ADDRESS, address),
           ("num_processes", ENV_NUM_PROCESSES, count), ("process_id", ENV_PROCESS_ID, index))
  missing = [f"--{flag} (or {env})" for flag, env, value in names if value is None]
  if missing:
    raise ValueError(
        f"--multihost needs --coordinator_address, --num_processes and --process_id together "
        f"(or none of them, to use {_CLUSTERS}); missing: {', '.join(missing)}")
  assert address is not None and count is not None and index is not None
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator_address={address!r} must be host:port, e.g. "
                     "10.0.0.1:1234 (process 0's address and a free port there)")
  if count < 1:
    raise ValueError(f"--num_processes must be >= 1, got {count}")
  if not 0 <= index < count:
    raise ValueError(f"--process_id must be in [0, {count - 1}] for --num_processes={count}, "
                     f"got {index}")
  return address, count, index


def _watchdog(timeout_s: float, message: str,
              armed: Optional[threading.Event] = None) -> threading.Event:
  """Returns an event that must be set within ``timeout_s`` of now (or of ``armed`` being set);
  otherwise prints ``error: message`` and ends the process with status 1.

  A daemon thread, because the main thread is then blocked inside JAX's C++ runtime; the exit
  skips Python's remaining clean-up, which would wait for the other processes again.
  """
  done = threading.Event()

  def watch() -> None:
    if armed is not None:
      armed.wait()
    if done.wait(timeout_s):
      return
    try:
      sys.stdout.flush()
      sys.stderr.write(f"error: {message}\n")
      sys.stderr.flush()
    finally:
      os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="score-sde-watchdog", daemon=True).start()
  return done
