"""Sample quality against NFE: the fast samplers at a few budgets and the PC / ODE baselines.

``python -m experiments.sampler_nfe --config configs/vpsde_mnist.py --workdir runs/vpsde_mnist
--nfe 10,20,50,100 --num_samples 1000``

Trains nothing: it samples the EMA parameters of a trained workdir's newest checkpoint (or
``--checkpoint STEP``; the exact-score toy, ``model.name = 'exact_score'``, needs none) with

* ``ddim`` (eta 0), ``dpm_solver`` 2M and 3M, the same followed by UniC (``unipc`` with the
  ``dpm_solver++`` predictor), ``unipc`` 2 and 3 (UniP-p + UniC, ``bh1``) and ``ipndm`` order 4,
  each on its own default schedule, ``nfe - 1`` steps plus the final denoising: ``nfe``
  evaluations;
* ``edm_heun`` (no churn), ``(nfe - 1) // 2`` steps plus the final Euler step (EDM's setting):
  at most ``nfe``;
* the baselines: the config's own PC sampler (``sampling.predictor`` / ``corrector`` over
  ``sde.N`` steps) and the adaptive probability-flow ODE (``sampling.ode_solver``),

and scores each batch with ``evaluation.two_sample_statistics`` (energy distance and MMD to the
data, and the prior's as a reference) against fresh toy data or the first ``--num_samples``
test images, in data space, and for images also with the evaluation's sample metrics
(``scorers.build_sample_scorer``: the MNIST classifier's for MNIST). Per case it records NFE,
the first call (compiling included) and a second call's time per batch. Outputs (``--out``):
``sampler_nfe_<config>_<UTC time>.json`` and ``.md`` (the table) and, where matplotlib is
installed, ``.png`` (energy distance against NFE).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

import builders
import datasets
import evaluation
from configs import apply_overrides, load_config, parse_override
from datasets import toy_data
from evaluation import scorers
from experiments.records import save_record
from experiments.time_to_bpd import first_test_images
from infra import checkpoints
from infra.commands import one_line_errors
from infra.devices import Devices, gather

Case = Tuple[str, Dict[str, Any], Optional[int]]
"""``(name, sampling overrides, num_steps or None)``."""


def cases(nfe_budgets: Sequence[int], denoise: bool = True) -> List[Case]:
  """The fast samplers at each budget, then the PC and ODE baselines (module docstring); with
  ``denoise=False`` no final denoising step, and the whole budget goes to the steps."""
  out: List[Case] = []
  for nfe in nfe_budgets:
    if nfe < 2 + denoise:
      raise ValueError(f"Every NFE budget must be >= {2 + denoise} (a step"
                       f"{' and the denoising' if denoise else ''}), got {nfe}.")
    fast = {"ddim": dict(method="ddim", eta=0.0),
            "dpm_solver_2m": dict(method="dpm_solver", order=2, multistep=True),
            "dpm_solver_3m": dict(method="dpm_solver", order=3, multistep=True),
            "dpm_solver_2m_unic": dict(method="unipc", order=2, unipc_predictor="dpm_solver++",
                                       unipc_corrector=True, unipc_variant="bh1"),
            "dpm_solver_3m_unic": dict(method="unipc", order=3, unipc_predictor="dpm_solver++",
                                       unipc_corrector=True, unipc_variant="bh1"),
            "unipc_2": dict(method="unipc", order=2, unipc_predictor="unip",
                            unipc_corrector=True, unipc_variant="bh1"),
            "unipc_3": dict(method="unipc", order=3, unipc_predictor="unip",
                            unipc_corrector=True, unipc_variant="bh1"),
            "ipndm_4": dict(method="ipndm", order=4)}
    steps = nfe - denoise
    out += [(name, dict(overrides, noise_removal=denoise), steps)
            for name, overrides in fast.items()]
    out.append(("edm_heun", dict(method="edm_heun", s_churn=0.0, noise_removal=denoise),
                steps // 2))
  return out + [("pc", dict(method="pc", noise_removal=denoise), None),
                ("ode", dict(method="ode", noise_removal=denoise), None)]


def _parameters(config: ml_collections.ConfigDict, workdir: str, checkpoint: Optional[int],
                model, template) -> Tuple[Any, Optional[int]]:
  """The EMA parameters to sample and their step (None for the exact score)."""
  if builders.is_exact_score(model):
    return template.ema_params, None
  store = checkpoints.CheckpointStore(os.path.join(workdir, "checkpoints"), writer=False)
  try:
    step = checkpoint if checkpoint is not None else store.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints; train first.")
    return store.restore(step, template).ema_params, step
  finally:
    store.close()


def _reference(config: ml_collections.ConfigDict, n: int, devices: Devices) -> np.ndarray:
  """``n`` data points in data space: fresh toy data, or the first ``n`` test images."""
  if datasets.is_vector_data(config):
    return toy_data.sample_toy(config.data.dataset, n, seed=config.seed + 5)
  return np.concatenate(first_test_images(config, n, n, devices))


def _quality(scorer: Optional[scorers.SampleScorer], samples: np.ndarray) -> Dict[str, Any]:
  """The evaluation's sample metrics (the MNIST classifier's, or FID / IS / KID) of one batch,
  at the samples' 8-bit levels; nothing without a scorer."""
  if scorer is None:
    return {}
  images = np.round(np.clip(samples, 0.0, 1.0) * 255.0) / 255.0
  return scorer.metrics(*scorer.feature_fn({"image": images}))


def run(config: ml_collections.ConfigDict, workdir: str, *, nfe_budgets: Sequence[int],
        num_samples: int, checkpoint: Optional[int] = None, timed: bool = True
        ) -> Dict[str, Any]:
  """Samples ``num_samples`` (one batch) with every case of :func:`cases`; returns the record.

  ``timed``: each case is run a second time, compiled, for its time per batch (``batch_s``;
  None without)."""
  devices = Devices()
  devices.check_batch(num_samples, "--num_samples")
  sde = builders.build_sde(config)
  model, _, template = builders.init_state(config, devices)
  params, step = _parameters(config, workdir, checkpoint, model, template)
  _, inverse_scaler = datasets.data_scalers(config)
  data = _reference(config, num_samples, devices)
  shape = datasets.input_shape(config, num_samples)
  prior = np.asarray(inverse_scaler(sde.prior_sampling(jax.random.PRNGKey(config.seed + 6),
                                                       shape)))
  rng = jax.random.PRNGKey(config.seed + 4)
  scorer, why_not = (None, "") if datasets.is_vector_data(config) else \
      scorers.build_sample_scorer(config, devices)
  if why_not:
    print(why_not)
  rows = []
  for name, overrides, num_steps in cases(nfe_budgets):
    case_config = apply_overrides(config, [(f"sampling.{k}", v) for k, v in overrides.items()])
    sampler = builders.build_sampler(case_config, sde, model, devices, num_samples,
                                     num_steps=num_steps)
    start = time.perf_counter()
    samples, nfe = sampler(rng, params)
    samples = np.asarray(inverse_scaler(gather(samples)))
    first_s = time.perf_counter() - start
    batch_s = None
    if timed:
      start = time.perf_counter()
      jax.block_until_ready(sampler(jax.random.fold_in(rng, 1), params))
      batch_s = time.perf_counter() - start
    rows.append({"sampler": name, "num_steps": num_steps, "nfe": float(nfe),
                 "first_call_s": first_s, "batch_s": batch_s,
                 "finite": bool(np.all(np.isfinite(samples))),
                 **evaluation.two_sample_statistics(samples, data, prior),
                 **_quality(scorer, samples)})
  return {"config": config.to_dict(), "step": step, "num_samples": num_samples,
          "device": jax.devices()[0].device_kind, "rows": rows}


def markdown(record: Dict[str, Any]) -> str:
  """The record's table: one row per case."""
  mnist = "mnist_fd" in record["rows"][0]
  extra = " MNIST FD | MNIST KID | MNIST IS | class KL |" if mnist else ""
  lines = ["| sampler | steps | NFE | energy distance | MMD |" + extra +
           " s / batch | first call s |",
           "|---|---|---|---|---|" + "---|" * (4 * mnist) + "---|---|"]
  for r in record["rows"]:
    quality = (f" {r['mnist_fd']:.3f} | {r['mnist_kid']:.4f} | {r['mnist_is']:.2f} | "
               f"{r['mnist_class_kl_from_uniform']:.3f} |" if mnist else "")
    lines.append(f"| {r['sampler']} | {r['num_steps'] if r['num_steps'] is not None else '-'} | "
                 f"{r['nfe']:.0f} | {r['energy_distance']:.4f} | {r['mmd']:.4f} |{quality} "
                 f"{'-' if r['batch_s'] is None else format(r['batch_s'], '.2f')} | "
                 f"{r['first_call_s']:.1f} |")
  first = record["rows"][0]
  lines.append(f"\nPrior against the data: energy distance {first['prior_energy_distance']:.4f}, "
               f"MMD {first['prior_mmd']:.4f}; {record['num_samples']} samples, "
               f"{record['device']}.")
  return "\n".join(lines) + "\n"


def plot(record: Dict[str, Any], path: str) -> None:
  """Energy distance against NFE (log axes), a line per fast sampler, the baselines as points."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5.5, 4))
  names = dict.fromkeys(r["sampler"] for r in record["rows"])
  for name in names:
    rows = [r for r in record["rows"] if r["sampler"] == name]
    ax.plot([r["nfe"] for r in rows], [r["energy_distance"] for r in rows],
            "o-" if len(rows) > 1 else "s", label=name)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("NFE")
  ax.set_ylabel("energy distance to the data")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--override", action="append", default=[], help="key=value, repeatable")
  parser.add_argument("--workdir", default="")
  parser.add_argument("--checkpoint", type=int, default=None)
  parser.add_argument("--nfe", default="10,20,50,100")
  parser.add_argument("--num_samples", type=int, default=1000)
  parser.add_argument("--untimed", action="store_true",
                      help="one call per case (no second, compiled call for the time per batch)")
  parser.add_argument("--out", default=os.path.join("experiments", "results"))
  args = parser.parse_args(argv)
  config = apply_overrides(load_config(args.config), [parse_override(o) for o in args.override])
  record = run(config, args.workdir, nfe_budgets=[int(n) for n in args.nfe.split(",")],
               num_samples=args.num_samples, checkpoint=args.checkpoint,
               timed=not args.untimed)
  record["command"] = ["python", "-m", "experiments.sampler_nfe"] + list(
      sys.argv[1:] if argv is None else argv)
  name = os.path.splitext(os.path.basename(args.config))[0]
  return save_record(record, args.out, f"sampler_nfe_{name}", markdown, plot)


if __name__ == "__main__":
  with one_line_errors():
    main()
