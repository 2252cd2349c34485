"""infra.cpu_runtime: the XLA:CPU flag it adds, when it adds it, and that training computes the
same numbers with it as with XLA's defaults."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infra import cpu_runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEASURED = cpu_runtime.MEASURED_JAXLIB[0]


def test_flag_is_added_to_existing_flags():
  flags = cpu_runtime.xla_flags("--xla_backend_optimization_level=0", MEASURED)
  assert flags.startswith("--xla_backend_optimization_level=0 " + cpu_runtime.FLAG + "=")
  assert "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION" not in flags
  assert cpu_runtime.xla_flags("", MEASURED).startswith(cpu_runtime.FLAG + "=")


def test_users_choice_and_other_versions_are_left_alone():
  own = f"{cpu_runtime.FLAG}=LIBRARY_FUSION_TYPE_DOT"
  assert cpu_runtime.xla_flags(own, MEASURED) is None
  assert cpu_runtime.xla_flags("", "0.0.1") is None


def test_configure_edits_the_given_environment_and_honours_the_opt_out():
  import jaxlib.version
  environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  added = cpu_runtime.configure_xla_flags(environ)
  assert added == (jaxlib.version.__version__ in cpu_runtime.MEASURED_JAXLIB)
  assert (cpu_runtime.FLAG in environ["XLA_FLAGS"]) == added
  assert environ["XLA_FLAGS"].startswith("--xla_cpu_enable_fast_math=false")
  environ = {cpu_runtime.OPT_OUT: "1"}
  assert not cpu_runtime.configure_xla_flags(environ)
  assert "XLA_FLAGS" not in environ


# Three DDPM++ training steps (convolutions and their gradients, GroupNorm, attention, Adam,
# clipping, EMA) on fixed data; prints the losses and the parameters' sums. The allocator too is
# configured where glibc is (it must not change a number either).
_TRAIN = r"""
import json, sys
sys.path.insert(0, {repo!r})
from infra import cpu_runtime
if {configure}:
  assert cpu_runtime.configure()["xla_flags"]
import jax, jax.numpy as jnp, numpy as np
import builders
from benchmarks.torch_peer import reduced_config
from infra.devices import Devices
config = reduced_config()
config.model.nf = 16
config.model.ch_mult = (1, 2)
config.model.num_res_blocks = 1
config.model.attn_resolutions = (8,)
config.data.image_size = 16
config.training.batch_size = 4
devices = Devices()
sde = builders.build_sde(config)
model, optimizer, state = builders.init_state(config, devices)
steps = builders.build_train_steps(config, sde, model, optimizer, state, devices)
x = jax.random.uniform(jax.random.PRNGKey(1), (3, 4, 16, 16, 3), minval=-1.0)
state, losses = steps(state, x)
sums = [float(jnp.sum(leaf)) for leaf in jax.tree_util.tree_leaves(state.params)]
print("RESULT " + json.dumps({{"losses": np.asarray(losses).tolist(), "sums": sums,
                              "flags": __import__("os").environ.get("XLA_FLAGS", "")}}))
"""


def test_allocator_is_only_changed_when_asked():
  assert not cpu_runtime.configure_allocator({})
  assert not cpu_runtime.configure_allocator({cpu_runtime.HOLD_FREED_MEMORY: "0"})
  environ = {cpu_runtime.OPT_OUT: "1"}
  applied = cpu_runtime.configure(environ)
  assert applied == {"xla_flags": False, "allocator": False,
                     "release_after_compilation": applied["release_after_compilation"]}
  assert "XLA_FLAGS" not in environ


def test_freed_memory_is_released_after_long_compilations_only(monkeypatch):
  calls = []
  monkeypatch.setattr(cpu_runtime, "release_freed_memory", lambda: calls.append(1))
  cpu_runtime._after_compilation(cpu_runtime.COMPILE_EVENT, 0.1)
  cpu_runtime._after_compilation("/jax/some/other_event", 5.0)
  assert not calls
  cpu_runtime._after_compilation(cpu_runtime.COMPILE_EVENT, 2.0, fun_name="train_step")
  assert calls == [1]
  # Not where freed memory is to be held.
  assert not cpu_runtime.release_after_compilation({cpu_runtime.HOLD_FREED_MEMORY: "1"})


def test_jax_reports_each_compilation_under_the_event_listened_to():
  import jax
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: events.append(event))
  jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.arange(7.0)).block_until_ready()
  assert cpu_runtime.COMPILE_EVENT in events


def _train(configure: bool) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in (cpu_runtime.OPT_OUT, cpu_runtime.HOLD_FREED_MEMORY)}
  env["XLA_FLAGS"] = ""
  if configure:
    env[cpu_runtime.HOLD_FREED_MEMORY] = "1"
  code = _TRAIN.format(repo=REPO, configure=configure)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_training_computes_the_same_numbers_as_with_xla_defaults():
  import jaxlib.version
  if jaxlib.version.__version__ not in cpu_runtime.MEASURED_JAXLIB:
    pytest.skip("the flag is only applied to the jaxlib versions it was measured on")
  default, tuned = _train(False), _train(True)
  assert cpu_runtime.FLAG not in default["flags"] and cpu_runtime.FLAG in tuned["flags"]
  np.testing.assert_allclose(tuned["losses"], default["losses"], rtol=1e-5)
  # Parameter sums after three Adam steps: round-off in a gradient moves a step by its lr at
  # most in sign-like Adam updates, so compare against the sums' own scale.
  sums_default, sums_tuned = np.array(default["sums"]), np.array(tuned["sums"])
  np.testing.assert_allclose(sums_tuned, sums_default, rtol=1e-5, atol=1e-4)
