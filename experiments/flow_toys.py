"""VP against rectified flow, and one round of reflow, on a 2-D toy: the table of what
``--mode eval`` and ``--mode reflow`` wrote, with standard errors.

``python -m experiments.flow_toys --dataset swiss_roll --run vp=runs/toy/swiss_roll
--run rf=runs/toy/rectified_flow_swiss_roll --run reflow=runs/toy/rectified_flow_swiss_roll/reflow
--folders eval_ode,euler_1,euler_2,euler_4``

For each run (``label=workdir``) and each evaluation folder it reads the newest step's samples
(``<folder>/step_<k>/samples_0.npz``) and ``summary.json`` (NFE, bits/dim), and scores the
samples against fresh data of ``--dataset`` (seeded apart from the evaluation's own): energy
distance and MMD on all samples, and the energy distance's mean and standard error over
``--chunks`` disjoint chunks of the samples (each against the same fresh data). With
``straightness.json`` in a workdir (``--mode reflow``'s) the straightness of the teacher and of
the reflowed flow is tabulated too. Outputs (``--out``): ``flow_toys_<dataset>_<UTC time>``
``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from datasets import toy_data
from evaluation import statistics
from experiments.records import save_record
from infra.commands import one_line_errors

_FRESH_SEED = 20261207


def _newest_step_dir(folder: str) -> str:
  steps = [int(name.split("_")[1]) for name in os.listdir(folder) if name.startswith("step_")]
  if not steps:
    raise FileNotFoundError(f"{folder} holds no step_<k> evaluation; run --mode eval first.")
  return os.path.join(folder, f"step_{max(steps)}")


def score(samples: np.ndarray, data: np.ndarray, chunks: int) -> Dict[str, float]:
  """Energy distance and MMD of ``samples: [N, 2]`` to ``data``, and the energy distance's mean
  and standard error over ``chunks`` disjoint chunks of the samples."""
  per_chunk = [statistics.energy_distance(part, data)
               for part in np.array_split(samples, chunks)]
  return {"energy_distance": statistics.energy_distance(samples, data),
          "mmd": statistics.mmd_rbf(samples, data),
          "chunk_energy_distance": float(np.mean(per_chunk)),
          "chunk_energy_distance_se": float(np.std(per_chunk, ddof=1) / np.sqrt(chunks))}


def rows(runs: Sequence[Sequence[str]], folders: Sequence[str], dataset: str,
         chunks: int) -> List[Dict[str, Any]]:
  """One row per (run, folder) present."""
  data = toy_data.sample_toy(dataset, 2000, seed=_FRESH_SEED)
  out = []
  for label, workdir in runs:
    for folder in folders:
      path = os.path.join(workdir, folder)
      if not os.path.isdir(path):
        continue
      step_dir = _newest_step_dir(path)
      with np.load(os.path.join(step_dir, "samples_0.npz")) as f:
        samples = np.asarray(f["samples"], np.float64)
      with open(os.path.join(path, "summary.json")) as f:
        summary = json.load(f)[os.path.basename(step_dir).split("_")[1]]
      row = {"run": label, "folder": folder, "num_samples": len(samples),
             "nfe": summary.get("sampling_nfe"), "bpd": summary.get("bpd"),
             "bpd_se": summary.get("bpd_stderr"), "bpd_nfe": summary.get("bpd_mean_nfe")}
      row.update(score(samples, data, chunks))
      out.append(row)
  return out


def _markdown(record: Dict[str, Any]) -> str:
  lines = [f"Toy {record['dataset']}: samples against 2000 fresh data points; energy distance "
           f"over {record['chunks']} chunks (mean ± s.e.) ({record['date']})", "",
           "| run | sampler | NFE | energy distance | ED per chunk | MMD | bits/dim |",
           "|---|---|---|---|---|---|---|"]
  for r in record["rows"]:
    bpd = f"{r['bpd']:.3f} ± {r['bpd_se']:.3f} ({r['bpd_nfe']:.0f} NFE)" if r["bpd"] else ""
    lines.append(f"| {r['run']} | {r['folder']} | {r['nfe']:.0f} | {r['energy_distance']:.4f} | "
                 f"{r['chunk_energy_distance']:.4f} ± {r['chunk_energy_distance_se']:.4f} | "
                 f"{r['mmd']:.4f} | {bpd} |")
  if record["straightness"]:
    lines += ["", "| run | straightness, teacher | straightness, reflow |", "|---|---|---|"]
    for label, s in record["straightness"].items():
      lines.append(f"| {label} | {s['teacher']['straightness']:.3g} ± "
                   f"{s['teacher']['straightness_se']:.2g} | {s['reflow']['straightness']:.3g} ± "
                   f"{s['reflow']['straightness_se']:.2g} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=toy_data.TOYS.names())
  parser.add_argument("--run", action="append", default=[], required=True,
                      help="label=workdir (repeat)")
  parser.add_argument("--folders", default="eval_ode,euler_1,euler_2,euler_4")
  parser.add_argument("--chunks", type=int, default=10)
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  runs = [run.split("=", 1) for run in args.run]
  if any(len(run) != 2 for run in runs) or args.chunks < 2:
    raise ValueError("--run takes label=workdir, and --chunks must be >= 2.")
  straightness = {}
  for label, workdir in runs:
    path = os.path.join(workdir, "straightness.json")
    if os.path.isfile(path):
      with open(path) as f:
        straightness[label] = json.load(f)
  record = {"dataset": args.dataset, "chunks": args.chunks,
            "rows": rows(runs, args.folders.split(","), args.dataset, args.chunks),
            "straightness": straightness, "date": str(np.datetime64("today"))}
  return save_record(record, args.out, f"flow_toys_{args.dataset}", _markdown,
                     lambda record, path: None)


if __name__ == "__main__":
  with one_line_errors():
    main()
