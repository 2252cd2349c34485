"""Compile and run time of the PC sampler versus the number of steps.

``python -m benchmarks.pc_scan`` samples with reverse_diffusion + langevin from a small
``toy_mlp`` score network (random parameters) on 2-D data. The sampler loop is one
``lax.scan``, so compile time should stay flat and run time grow linearly (flat time per
step) in ``num_steps``. Prints a table and writes
``benchmarks/results/pc_scan_<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp

import sampling
import sde_lib
from infra.provenance import device_slug
from models import utils as mutils
from models.mlp import ToyMLP


def bench(num_steps: int, batch: int, repeats: int, model: ToyMLP, params: Any,
          sde: sde_lib.SDE) -> Dict[str, float]:
  """Compile seconds and median run seconds of one jitted sampler (params traced)."""
  sampler = sampling.get_pc_sampler(sde, (batch, 2), "reverse_diffusion", "langevin",
                                    num_steps=num_steps)

  def sample(params, rng):
    return sampler(rng, mutils.get_score_fn(sde, model, params, continuous=True))[0]

  start = time.perf_counter()
  compiled = jax.jit(sample).lower(params, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - start
  compiled(params, jax.random.PRNGKey(0)).block_until_ready()  # warm-up
  runs: List[float] = []
  for i in range(repeats):
    start = time.perf_counter()
    compiled(params, jax.random.PRNGKey(i + 1)).block_until_ready()
    runs.append(time.perf_counter() - start)
  run_s = statistics.median(runs)
  return {"num_steps": num_steps, "compile_s": compile_s, "run_s": run_s,
          "run_ms_per_step": 1e3 * run_s / num_steps}


def main(argv: List[str] | None = None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 400, 800])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)

  sde = sde_lib.VPSDE()
  model = ToyMLP(nf=64, num_blocks=2)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)))["params"]
  rows = [bench(n, args.batch, args.repeats, model, params, sde) for n in args.steps]

  print(f"{'num_steps':>9} {'compile [s]':>12} {'run [s]':>9} {'run/step [ms]':>14}")
  for r in rows:
    print(f"{r['num_steps']:>9d} {r['compile_s']:>12.3f} {r['run_s']:>9.4f} "
          f"{r['run_ms_per_step']:>14.4f}")

  device = device_slug(jax.devices()[0].device_kind)
  result = {
      "device": device,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax_version": jax.__version__,
      "command": " ".join(["python -m benchmarks.pc_scan"]
                          + (argv if argv is not None else sys.argv[1:])),
      # Context for CPU timings on a shared machine.
      "load_average_1min": os.getloadavg()[0],
      "sampler": "reverse_diffusion + langevin (n_steps=1), denoise, VPSDE",
      "model": "toy_mlp nf=64 num_blocks=2, random params (traced argument)",
      "batch": args.batch,
      "repeats": args.repeats,
      "rows": rows,
  }
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, f"pc_scan_{device}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
