"""Where a train step's time goes: the loss alone, the loss with its gradient, the whole step.

``python -m benchmarks.train_step_parts --config configs/tutorial_mnist.py [--batch 32]
[--override training.batch_size=16] [--repeats 15] [--out benchmarks/results]``

Each part is the config's own function from ``builders`` (the training loss, its
``value_and_grad``, the train step with Adam, clipping and EMA), jitted on its own and run on
one synthetic batch of the config's shape with random parameters: the first call (compiling
included) and the median and minimum of ``--repeats`` calls after it, each ending in
``block_until_ready``. The gradient's share is ``loss + gradient - loss``, the update's
``step - loss + gradient``. A backward pass usually costs about twice the forward pass; a much
larger ratio points at the backend's gradient kernels rather than the model. Outputs:
``train_step_parts_<config>_<device>_<UTC time>`` ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp

import builders
import datasets
from configs import apply_overrides, load_config, parse_override
from experiments.records import save_record
from infra import cpu_runtime
from infra.commands import one_line_errors
from infra.devices import Devices


def time_calls(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> Dict[str, float]:
  """``{"first_s", "median_ms", "min_ms"}`` of ``fn(*args)``, each call waited for."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - start))
  return {"first_s": first, "median_ms": statistics.median(times), "min_ms": min(times)}


def measure(config: Any, repeats: int) -> Dict[str, Dict[str, float]]:
  """The three parts' timings for ``config`` at ``config.training.batch_size``."""
  devices = Devices()
  sde = builders.build_sde(config)
  model, optimizer, state = builders.init_state(config, devices)
  loss_fn = builders.build_loss_fn(config, sde, model, train=True)
  step_fn = builders.build_train_step(config, sde, model, optimizer)
  size = config.data.image_size
  shape = ((config.training.batch_size, config.data.dim) if datasets.is_vector_data(config)
           else (config.training.batch_size, size, size, config.data.num_channels))
  x = datasets.data_scalers(config)[0](
      jax.random.uniform(jax.random.PRNGKey(1), shape, jnp.float32))
  rng = jax.random.PRNGKey(0)
  parts = {"loss": time_calls(jax.jit(loss_fn), (state.params, rng, x), repeats),
           "loss + gradient": time_calls(jax.jit(jax.value_and_grad(loss_fn)),
                                         (state.params, rng, x), repeats),
           "train step": time_calls(jax.jit(step_fn), (state, x), repeats)}
  return parts


def _markdown(record: Dict[str, Any]) -> str:
  parts = record["parts"]
  forward = parts["loss"]["median_ms"]
  gradient = parts["loss + gradient"]["median_ms"] - forward
  update = parts["train step"]["median_ms"] - parts["loss + gradient"]["median_ms"]
  lines = [f"Train step parts: {record['config']}, batch {record['batch']}, "
           f"{record['device']}, {record['date']} (median of {record['repeats']})", "",
           "| part | first call (s) | median (ms) | min (ms) |", "|---|---|---|---|"]
  for name, p in parts.items():
    lines.append(f"| {name} | {p['first_s']:.2f} | {p['median_ms']:.1f} | {p['min_ms']:.1f} |")
  update_text = f"{update:.1f} ms" if update > 0 else "below the timing noise"
  lines += ["", f"gradient {gradient:.1f} ms ({gradient / forward:.1f} x the forward loss), "
            f"optimizer and EMA {update_text}"]
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--override", action="append", default=[], type=parse_override)
  parser.add_argument("--batch", type=int, default=None, help="default: training.batch_size")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args(argv)
  config = apply_overrides(load_config(args.config), args.override)
  if args.batch is not None:
    config.training.batch_size = args.batch
  if config.training.batch_size < 1 or args.repeats < 1:
    raise ValueError(f"--batch and --repeats must be >= 1, got {config.training.batch_size} and "
                     f"{args.repeats}.")
  record = {"config": os.path.basename(args.config), "batch": config.training.batch_size,
            "repeats": args.repeats, "parts": measure(config, args.repeats),
            "device": jax.devices()[0].device_kind, "threads": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
  name = f"train_step_parts_{os.path.splitext(record['config'])[0]}_{record['device']}"
  return save_record(record, args.out, name, _markdown, lambda record, path: None)


if __name__ == "__main__":
  # As main.py runs: the times are those a user gets.
  cpu_runtime.configure()
  with one_line_errors():
    main()
