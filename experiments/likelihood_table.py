"""Bits/dim through the ODE beside the likelihood bound, per run, from what ``--mode eval``
wrote; for a 2-D toy also the data's own entropy, the floor both must stay above.

``python -m experiments.likelihood_table --run standard=W1/eval_likelihood
--run lw_is=W2/eval_likelihood [--dataset checkerboard]``

Each ``--run label=<workdir>/<eval folder>`` gives the newest step of its ``summary.json``:
bits/dim and its standard error over examples, the mean NFE, the bound with its standard error
over examples and the Monte Carlo part of it, and the scale they are stated on. Evaluations of
the same examples with the same seed share the dequantization draws, so each run after the
first also gets its per-example difference to the first run, paired, with the standard error of
that difference (far smaller than either run's own, which the spread over examples dominates).
With
``--dataset``, :func:`known_entropy_bits` (checkerboard: uniform on 8 cells of area 3/4, so
``log2(6) / 2`` bits/dim exactly; gaussian_mixture: Monte Carlo over the exact density, with its
standard error). Outputs (``--out``): ``likelihood_<name>_<UTC time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets import toy_data
from experiments.records import save_record
from infra import outputs
from infra.commands import one_line_errors


def known_entropy_bits(name: str, num_samples: int = 1_000_000,
                       seed: int = 0) -> Tuple[float, float]:
  """``(entropy in bits per dimension, its standard error)`` of the toy ``name``.

  Raises:
    ValueError: for a toy whose entropy is not known here (the swiss roll's has no closed form).
  """
  if name == "checkerboard":
    # Uniform on 8 cells of side 2 sqrt(3) / 4: area 8 * 3/4 = 6, entropy ln 6 over 2 dimensions.
    return math.log2(6.0) / 2.0, 0.0
  if name == "gaussian_mixture":
    means, std = toy_data.gaussian_mixture_parameters()
    x = toy_data.sample_toy(name, num_samples, seed=seed).astype(np.float64)
    sq = np.sum((x[:, None, :] - means[None]) ** 2, axis=-1)                 # [N, K]
    log_components = -0.5 * sq / std ** 2 - np.log(2 * np.pi * std ** 2)
    peak = log_components.max(axis=1)
    logp = peak + np.log(np.mean(np.exp(log_components - peak[:, None]), axis=1))
    bits = -logp / (2 * np.log(2.0))
    return float(bits.mean()), float(bits.std() / np.sqrt(num_samples))
  raise ValueError(f"No known entropy for the toy {name!r}; known: checkerboard, "
                   "gaussian_mixture.")


def row(label: str, folder: str) -> Dict[str, Any]:
  """The newest step's likelihoods in ``folder``'s ``summary.json``."""
  path = os.path.join(folder, "summary.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; run --mode eval with --eval_folder "
                            f"{os.path.basename(folder)} first.")
  summary = outputs.load_json(path)
  step = max(summary, key=int)
  result = summary[step]
  keys = ("bpd", "bpd_stderr", "bpd_count", "bpd_mean_nfe", "bound", "bound_stderr",
          "bound_mc_stderr", "bound_count", "bound_num_draws", "bpd_scale")
  return {"label": label, "folder": folder, "step": int(step),
          **{k: result[k] for k in keys if k in result}}


def per_example(folder: str, step: int, kind: str) -> Optional[np.ndarray]:
  """The per-example values of ``kind`` (``'bpd'`` or ``'bound'``) the evaluation saved, in
  order (repeat, then batch); None if it saved none."""
  def order(path: str) -> Tuple[int, int]:
    name = os.path.basename(path)[len(kind) + len("_repeat"):-len(".npz")]
    repeat, batch = name.split("_batch")
    return int(repeat), int(batch)

  paths = sorted(glob.glob(os.path.join(folder, f"step_{step}", f"{kind}_repeat*_batch*.npz")),
                 key=order)
  if not paths:
    return None
  parts = []
  for path in paths:
    with np.load(path) as piece:
      parts.append(np.asarray(piece["bpd"], np.float64))
  return np.concatenate(parts)


def paired_differences(rows: List[Dict[str, Any]]) -> None:
  """Adds ``<kind>_minus_first`` and its ``_stderr`` to every row after the first whose
  per-example values line up with the first row's."""
  first = rows[0]
  for r in rows[1:]:
    for kind in ("bpd", "bound"):
      a = per_example(first["folder"], first["step"], kind)
      b = per_example(r["folder"], r["step"], kind)
      if a is None or b is None or a.shape != b.shape:
        continue
      d = b - a
      r[f"{kind}_minus_first"] = float(d.mean())
      r[f"{kind}_minus_first_stderr"] = float(d.std(ddof=1) / np.sqrt(d.size))


def _cell(r: Dict[str, Any], key: str) -> str:
  if key not in r:
    return "-"
  return f"{r[key]:.4f} ± {r[key + '_stderr']:.4f}"


def _markdown(record: Dict[str, Any]) -> str:
  lines = [f"Likelihoods ({record['date']})", ""]
  if "entropy_bits" in record:
    lines += [f"Data entropy ({record['dataset']}): {record['entropy_bits']:.4f} ± "
              f"{record['entropy_stderr']:.4f} bits/dim", ""]
  first = record["rows"][0]["label"]
  lines += [f"| run | step | ODE bits/dim | NFE | bound | bound's Monte Carlo s.e. | ODE, paired "
            f"difference to {first} | bound, paired difference to {first} | examples | scale |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for r in record["rows"]:
    nfe = f"{r['bpd_mean_nfe']:.0f}" if "bpd_mean_nfe" in r else "-"
    mc = f"{r['bound_mc_stderr']:.4f}" if "bound_mc_stderr" in r else "-"
    count = r.get("bpd_count", r.get("bound_count", "-"))
    lines.append(f"| {r['label']} | {r['step']} | {_cell(r, 'bpd')} | {nfe} | "
                 f"{_cell(r, 'bound')} | {mc} | {_cell(r, 'bpd_minus_first')} | "
                 f"{_cell(r, 'bound_minus_first')} | {count} | {r.get('bpd_scale', '-')} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", action="append", default=[], required=True,
                      help="label=<workdir>/<eval folder> (repeat)")
  parser.add_argument("--dataset", default="", help="a 2-D toy: its known entropy too")
  parser.add_argument("--name", default="", help="the record's name (default: the dataset's)")
  parser.add_argument("--out", default="experiments/results")
  args = parser.parse_args(argv)
  runs = [run.split("=", 1) for run in args.run]
  if any(len(run) != 2 for run in runs):
    raise ValueError("--run takes label=<workdir>/<eval folder>.")
  rows: List[Dict[str, Any]] = [row(label, folder) for label, folder in runs]
  paired_differences(rows)
  record: Dict[str, Any] = {"rows": rows, "date": str(np.datetime64("today"))}
  if args.dataset:
    entropy, stderr = known_entropy_bits(args.dataset)
    record.update(dataset=args.dataset, entropy_bits=entropy, entropy_stderr=stderr)
  name = args.name or args.dataset or "runs"
  return save_record(record, args.out, f"likelihood_{name}", _markdown, lambda record, path: None)


if __name__ == "__main__":
  with one_line_errors():
    main()
