"""Cheap compilation for the NCSN++ and FIR resampling tests on CPU: inputs drawn in numpy,
programs compiled without LLVM's expensive passes, and bfloat16's unit roundoff to bound their
low-precision errors with."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed, shape):
  """N(0, 1) float32 test inputs drawn in numpy (jax.random would compile threefry per shape)."""
  return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


# On CPU, LLVM optimization triples the compile time of these small networks and saves little
# run time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **static):
  """``jax.jit(partial(fn, **static))``, compiled with :data:`FAST_COMPILE` per input signature."""
  jitted = jax.jit(functools.partial(fn, **static))
  cache = {}

  def call(*args):
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (treedef, tuple((a.shape, a.dtype) for a in leaves))
    if key not in cache:
      cache[key] = jitted.lower(*args).compile(compiler_options=FAST_COMPILE)
    return cache[key](*args)

  return call


# bfloat16 has an 8-bit significand: unit roundoff u = 2^-8 per rounding.
BF16_U = 2.0 ** -8
