"""How XLA:CPU runs the programs: which library computes what, and where its buffers come from.

XLA:CPU (jaxlib 0.10.2) hands dots, reductions, elementwise fusions and convolutions to the
YNNPACK library by default. YNNPACK's convolution is fast forward but slow for the gradient of a
convolution's kernel, which XLA expresses as a convolution whose "kernel" is the whole
activation map (32x32 for a 32x32 image) and whose output is 3x3: for a 3x3 convolution of
64 channels on 16 32x32 images it takes 33 ms where XLA's own (Eigen) convolution takes 10 ms
and the forward pass 9 ms. :func:`configure_xla_flags` keeps YNNPACK's dots, reductions and
elementwise fusions and leaves single convolutions to XLA's own: the DDPM++ train step of
``benchmarks/torch_peer.py`` ran 1.0-1.65x faster on a 2-core Xeon (most at batch 64 and on two
threads), with about 9 % more peak memory (``docs/speed.md`` has the figures and commands).

Only the compiler's choice of kernels changes, so results agree with the default to float32
round-off (tested). The setting is an experimental XLA flag, so it is applied only to the
jaxlib versions it was measured on (:data:`MEASURED_JAXLIB`); a flag of the same name already in
``XLA_FLAGS`` wins.

XLA:CPU also allocates every temporary buffer of a program afresh on each call. glibc serves
blocks above 32 MiB with ``mmap`` and unmaps them on release (and shrinks the arenas of XLA's
worker threads), so each call of a train step faults in and zeroes its buffers again: 60-200 k
page faults per step of the DDPM++ above. ``SCORE_SDE_HOLD_FREED_MEMORY=1`` makes
:func:`configure_allocator` keep one arena and keep released memory in the process
(``mallopt``): the faults go and the step takes 5-15 % less time, but blocks freed by one
program are not always reusable by the next, so a process that runs programs of several sizes
(training, then sampling at another batch) held up to twice the memory (measured). It is
therefore off unless asked for.

Compiling a program leaves the compiler's freed memory in glibc's arenas, where the program's
own buffers, allocated afresh and large, do not reuse it: a process that compiled and ran a
DDPM++ train step at batch 16, then at batch 64, peaked at 2,202 MiB, and at 1,959 MiB when
``malloc_trim`` returned that memory to the system after each compilation (the PyTorch port's
whole benchmark run: 2,027). :func:`release_after_compilation` does that after every compilation that took over
half a second (unless memory is to be held, above).

``SCORE_SDE_XLA_CPU_DEFAULTS=1`` keeps XLA's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Dict, MutableMapping, Optional

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
FUSION_TYPES = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE",
                "LIBRARY_FUSION_TYPE_ELTWISE")
MEASURED_JAXLIB = ("0.10.2",)
OPT_OUT = "SCORE_SDE_XLA_CPU_DEFAULTS"
HOLD_FREED_MEMORY = "SCORE_SDE_HOLD_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h) and the largest value they take (a C int).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_INT_MAX = 2 ** 31 - 1
# JAX's monitoring event after each XLA compilation (or compilation-cache load), with its time.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Shorter compilations (the many small programs of a run) leave too little behind to be worth a
# trim, which walks every arena.
_RELEASE_AFTER_S = 0.5
_RELEASING = False


def _is_set(environ: MutableMapping[str, str], name: str) -> bool:
  return environ.get(name, "").strip() not in ("", "0")


def _glibc() -> bool:
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _libc() -> ctypes.CDLL:
  return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def xla_flags(current: str, jaxlib_version: str) -> Optional[str]:
  """``XLA_FLAGS`` with :data:`FLAG` added, or None where it stays as it is (another jaxlib, or
  the user already chose)."""
  if jaxlib_version not in MEASURED_JAXLIB or FLAG + "=" in current:
    return None
  return " ".join(part for part in (current.strip(), f"{FLAG}={','.join(FUSION_TYPES)}")
                  if part)


def configure_xla_flags(environ: Optional[MutableMapping[str, str]] = None) -> bool:
  """Adds :data:`FLAG` to ``environ["XLA_FLAGS"]`` (default ``os.environ``); returns whether it
  did. Call before JAX's first computation: XLA reads its flags when the backend starts."""
  import jaxlib.version  # pylint: disable=import-outside-toplevel
  environ = os.environ if environ is None else environ
  if _is_set(environ, OPT_OUT):
    return False
  flags = xla_flags(environ.get("XLA_FLAGS", ""), jaxlib.version.__version__)
  if flags is None:
    return False
  environ["XLA_FLAGS"] = flags
  return True


def configure_allocator(environ: Optional[MutableMapping[str, str]] = None) -> bool:
  """If ``environ[HOLD_FREED_MEMORY]`` is set, and with glibc: one malloc arena, blocks up to
  2 GiB from the heap rather than ``mmap``, and released memory kept for reuse (module
  docstring: faster steps, possibly more memory); returns whether it applied. Best called before
  the first JAX computation starts XLA's threads."""
  environ = os.environ if environ is None else environ
  if not _is_set(environ, HOLD_FREED_MEMORY) or not _glibc():
    return False
  libc = _libc()
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _INT_MAX), (_M_TRIM_THRESHOLD, _INT_MAX))
  return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1
             for param, value in settings)


def release_freed_memory() -> None:
  """Returns the memory glibc holds freed to the system (``malloc_trim``; all arenas)."""
  _libc().malloc_trim(0)


def _after_compilation(event: str, duration_s: float, **_: object) -> None:
  if event == COMPILE_EVENT and duration_s >= _RELEASE_AFTER_S:
    release_freed_memory()


def release_after_compilation(environ: Optional[MutableMapping[str, str]] = None) -> bool:
  """With glibc, calls :func:`release_freed_memory` after every XLA compilation of at least
  half a second (module docstring: a lower peak); returns whether it will. Not where
  ``environ[HOLD_FREED_MEMORY]`` asks to keep freed memory. Registered once per process."""
  global _RELEASING  # pylint: disable=global-statement  (one listener per process)
  environ = os.environ if environ is None else environ
  if _is_set(environ, HOLD_FREED_MEMORY) or not _glibc():
    return False
  if not _RELEASING:
    import jax  # pylint: disable=import-outside-toplevel
    jax.monitoring.register_event_duration_secs_listener(_after_compilation)
    _RELEASING = True
  return True


def configure(environ: Optional[MutableMapping[str, str]] = None) -> Dict[str, bool]:
  """The settings above, as every entry point that runs the project applies them (``main.py``,
  the benchmarks); returns which applied. Call before JAX's first computation."""
  return {"xla_flags": configure_xla_flags(environ), "allocator": configure_allocator(environ),
          "release_after_compilation": release_after_compilation(environ)}
