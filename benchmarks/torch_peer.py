"""This project against the authors' PyTorch port (score_sde_pytorch) on a CPU: the same network
with the same weights, checked equal first, then timed side by side.

``python -m benchmarks.torch_peer --peer_repo DIR --peer_python PY [--threads 1,2]
[--batches 16,64] [--repeats 5] [--with_xla_defaults]``

``--peer_repo``: a checkout of github.com/yang-song/score_sde_pytorch; ``--peer_python``: a
Python with torch and ml_collections (a scratch environment: torch is not a dependency here).

1. A scratch folder gets the peer's ``models/``, ``losses.py`` and ``sde_lib.py``; its ``op/``
   package, CUDA extensions compiled at import, is replaced by pure-PyTorch ``upfirdn2d``
   (:data:`_PURE_TORCH_OP`; the network here, without FIR, never calls it, but the peer's
   modules import it).
2. The network: ``configs/vp/cifar10_ddpmpp_continuous.py`` with ``nf = 32``,
   ``ch_mult = (1, 2, 2)``, two residual blocks, attention at 16, 32x32x3 images (the same
   field names on both sides: the config is handed to the peer as JSON). The peer initialises
   it and saves an authors' ``.pth`` checkpoint, which this project reads with
   :mod:`models.released` (every weight moved off its initialisation by ``N(0, 0.05^2)`` noise,
   so that the last layer, initialised near zero, counts too); both run the network on the same
   inputs and noise levels and compute the DSM loss at the same ``(t, z)``; the largest
   differences are reported and the output's must be below ``--tolerance`` relative to the
   largest output. (Scores are not compared: at ``t = 1e-5`` they divide by ``std ~ 3e-3``,
   which the two compute with different float32 rounding.)
3. Timing, each side in its own process pinned with ``taskset`` to ``threads`` cores and using
   that many threads: the forward pass (evaluation mode) and the train step (continuous DSM,
   Adam with gradient clipping, EMA: the peer's own ``losses.get_step_fn``, this project's
   ``builders.build_train_steps``), medians of ``--repeats`` after two warm-up calls, the first
   train step's time (compilation here), the process's peak resident memory and its minor page
   faults per call (forward passes and train steps together). This project's side runs as
   ``main.py`` runs (:mod:`infra.cpu_runtime`); ``--with_xla_defaults`` times it a second time
   with XLA's and glibc's defaults (``SCORE_SDE_XLA_CPU_DEFAULTS=1``,
   ``SCORE_SDE_HOLD_FREED_MEMORY=0``), the before and after of that module in one run;
   ``SCORE_SDE_HOLD_FREED_MEMORY=1`` in the environment times the opt-in allocator setting.

Writes ``benchmarks/results/torch_peer_cpu_<UTC time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from infra import cpu_runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/vp/cifar10_ddpmpp_continuous.py"
REDUCED = {"model.nf": 32, "model.ch_mult": (1, 2, 2), "model.num_res_blocks": 2,
           "model.attn_resolutions": (16,), "model.dropout": 0.0}

_PURE_TORCH_OP = '''"""upfirdn2d in plain PyTorch: zeros inserted, padded, filtered, downsampled."""
import torch
import torch.nn.functional as F


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  n, c, h, w = x.shape
  x = x.reshape(n * c, 1, h, w)
  if up > 1:
    spread = x.new_zeros(n * c, 1, h * up, w * up)
    spread[:, :, ::up, ::up] = x
    x = spread
  x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
  x = F.conv2d(x, torch.flip(kernel, [0, 1]).to(x)[None, None])[:, :, ::down, ::down]
  return x.reshape(n, c, x.shape[2], x.shape[3])
'''

_PEER_DRIVER = r'''
import json, resource, sys, time
import numpy as np
import ml_collections
import torch
import losses
import sde_lib
from models import ncsnpp  # registers the network
from models import utils as mutils
from models.ema import ExponentialMovingAverage

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
config = ml_collections.ConfigDict(args["config"])
config.device = torch.device("cpu")
torch.manual_seed(0)
model = mutils.create_model(config)
sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                    N=config.model.num_scales)
out = {}
if args["task"] == "init":
  # The last layer starts near zero (init_scale 0): weights moved off their initialisation make
  # every layer count in the comparison.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  torch.save({"optimizer": optimizer.state_dict(), "model": model.state_dict(),
              "ema": ema.state_dict(), "step": 0}, args["checkpoint"])
  data = np.load(args["inputs"])
  x = torch.tensor(data["x"]).permute(0, 3, 1, 2)
  t, z = torch.tensor(data["t"]), torch.tensor(data["z"]).permute(0, 3, 1, 2)
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  with torch.no_grad():
    output = mutils.get_model_fn(model, train=False)(x, t * 999)
    mean, std = sde.marginal_prob(x, t)
    perturbed = mean + std[:, None, None, None] * z
    s = score_fn(perturbed, t)
    loss = torch.square(s * std[:, None, None, None] + z).reshape(len(t), -1).mean(1).mean()
  out = {"output": output.permute(0, 2, 3, 1).numpy().tolist(), "loss": float(loss)}
else:
  state = torch.load(args["checkpoint"], weights_only=False)
  model.load_state_dict(state["model"])
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                               reduce_mean=config.training.reduce_mean, continuous=True,
                               likelihood_weighting=False)
  train_state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
  for batch in args["batches"]:
    x = torch.rand(batch, 3, 32, 32)
    forward_fn = mutils.get_model_fn(model, train=False)
    labels = torch.rand(batch) * 999

    def forward():
      with torch.no_grad():
        forward_fn(x, labels)

    def train():
      step_fn(train_state, x)

    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter(); train(); first = time.perf_counter() - start
    timings = {}
    for name, fn in (("forward", forward), ("train", train)):
      for _ in range(2):
        fn()
      times = []
      for _ in range(args["repeats"]):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
      timings[name] = times
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    out[str(batch)] = {"forward_s": timings["forward"], "train_s": timings["train"],
                       "first_train_s": first,
                       "minor_faults_per_call": faults / (1 + 2 * (2 + args["repeats"]))}
  out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
'''


def reduced_config() -> Any:
  """The compared network's config (module docstring)."""
  import configs  # pylint: disable=import-outside-toplevel
  config = configs.load_config(os.path.join(REPO, CONFIG))
  for key, value in REDUCED.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def _cpu_name() -> str:
  """The CPU's model name (Linux), else the platform's machine type."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
  except OSError:
    pass
  return platform.machine()


def _taskset(threads: int) -> List[str]:
  return ["taskset", "-c", ",".join(str(i) for i in range(threads))] if shutil.which(
      "taskset") else []


def _peer_scratch(peer_repo: str, folder: str) -> None:
  for name in ("models", "losses.py", "sde_lib.py"):
    source = os.path.join(peer_repo, name)
    if not os.path.exists(source):
      raise FileNotFoundError(f"--peer_repo {peer_repo} has no {name}: give a checkout of "
                              "score_sde_pytorch.")
    target = os.path.join(folder, name)
    (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, target)
  os.makedirs(os.path.join(folder, "op"))
  with open(os.path.join(folder, "op", "__init__.py"), "w") as f:
    f.write(_PURE_TORCH_OP)
  with open(os.path.join(folder, "driver.py"), "w") as f:
    f.write(_PEER_DRIVER)


def _run(command: Sequence[str], cwd: str, env: Optional[Dict[str, str]] = None
         ) -> Dict[str, Any]:
  result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=3600)
  lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
  if result.returncode != 0 or not lines:
    raise RuntimeError(f"{' '.join(command[:4])} failed: {result.stderr.strip()[-1500:]}")
  return json.loads(lines[-1][len("RESULT "):])


def ours(task: Dict[str, Any]) -> Dict[str, Any]:
  """This project's side of :data:`_PEER_DRIVER` (run in its own process, set up for the CPU as
  ``main.py`` sets it up)."""
  tuned = cpu_runtime.configure()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import builders  # pylint: disable=import-outside-toplevel
  import losses  # pylint: disable=import-outside-toplevel
  from infra.devices import Devices  # pylint: disable=import-outside-toplevel
  config = reduced_config()
  devices = Devices()
  sde = builders.build_sde(config)
  model, released = builders.load_released(config, task["checkpoint"], ema=False)
  params = released.params
  if task["task"] == "init":
    data = np.load(task["inputs"])
    score_fn = builders.build_score_fn(config, sde, model, devices)(params)
    x, t, z = (jnp.asarray(data[k]) for k in ("x", "t", "z"))
    loss = losses.dsm_losses(score_fn, sde, x, t, z, reduce_mean=True).mean()
    output = model.apply({"params": params}, x, t * 999, train=False)
    return {"output": np.asarray(output).tolist(), "loss": float(loss)}
  out: Dict[str, Any] = {}
  for batch in task["batches"]:
    config.training.batch_size = batch
    _, optimizer, state = builders.init_state(config, devices)
    # Copies: the train step donates its state, and the forward pass still reads ``params``.
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)
    state = state.replace(params=copy(params), ema_params=copy(params))
    steps = builders.build_train_steps(config, sde, model, optimizer, state, devices)
    forward_fn = jax.jit(lambda p, x, t: model.apply(p, x, t, train=False))
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, batch, 32, 32, 3))
    labels = jnp.full((batch,), 500.0)
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    state, loss = steps(state, x)
    jax.block_until_ready(loss)
    first = time.perf_counter() - start
    timings = {}
    for name in ("forward", "train"):
      times = []
      for k in range(2 + task["repeats"]):
        start = time.perf_counter()
        if name == "forward":
          jax.block_until_ready(forward_fn({"params": params}, x[0], labels))
        else:
          state, loss = steps(state, x)
          jax.block_until_ready(loss)
        if k >= 2:
          times.append(time.perf_counter() - start)
      timings[name] = times
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    out[str(batch)] = {"forward_s": timings["forward"], "train_s": timings["train"],
                       "first_train_s": first,
                       "minor_faults_per_call": faults / (1 + 2 * (2 + task["repeats"]))}
  out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  out["xla_flags"], out["cpu_runtime"] = os.environ.get("XLA_FLAGS", ""), tuned
  return out


def _markdown(record: Dict[str, Any]) -> str:
  lines = [f"PyTorch peer against this project, {record['date']} ({record['machine']}), "
           f"`{record['command']}`", "",
           f"Same weights: largest network output difference "
           f"{record['equality']['max_output_diff']:.2e} (largest output "
           f"{record['equality']['max_output']:.2f}), DSM loss {record['equality']['loss']:.6f} "
           f"against a difference of {record['equality']['loss_diff']:.2e}.", "",
           f"This project's XLA flags: `{record['ours_xla_flags']}`; "
           f"`infra.cpu_runtime` applied: {record.get('ours_cpu_runtime', 'not recorded')}.", ""]
  defaults = "ours_xla_defaults" in record["rows"][0]
  extra_head = (" project, XLA defaults (median s) | XLA defaults / peer |" if defaults else "")
  lines += ["| threads | batch | case | project (median s) | peer (median s) | project / peer |"
            + extra_head, "|---|---|---|---|---|---|" + ("---|---|" if defaults else "")]
  for row in record["rows"]:
    line = (f"| {row['threads']} | {row['batch']} | {row['case']} | {row['ours']:.3f} | "
            f"{row['peer']:.3f} | {row['ours'] / row['peer']:.2f} |")
    if defaults:
      line += f" {row['ours_xla_defaults']:.3f} | {row['ours_xla_defaults'] / row['peer']:.2f} |"
    lines.append(line)
  lines += ["", "| threads | batch | project first step (s) | peer first step (s) | project page "
            "faults / call | peer page faults / call | project peak RSS (MiB) | peer peak RSS "
            "(MiB) |", "|---|---|---|---|---|---|---|---|"]
  for extra in record["extras"]:
    lines.append(f"| {extra['threads']} | {extra['batch']} | {extra['ours_first']:.1f} | "
                 f"{extra['peer_first']:.1f} | {extra['ours_faults']:.0f} | "
                 f"{extra['peer_faults']:.0f} | {extra['ours_rss']:.0f} | "
                 f"{extra['peer_rss']:.0f} |")
  if defaults:
    lines += ["", "This project with XLA's and glibc's defaults:", "",
              "| threads | batch | first step (s) | page faults / call | peak RSS (MiB) |",
              "|---|---|---|---|---|"]
    for extra in record["extras"]:
      lines.append(f"| {extra['threads']} | {extra['batch']} | {extra['defaults_first']:.1f} | "
                   f"{extra['defaults_faults']:.0f} | {extra['defaults_rss']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--peer_repo", required=True)
  parser.add_argument("--peer_python", required=True)
  parser.add_argument("--threads", default="1,2")
  parser.add_argument("--batches", default="16,64")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--tolerance", type=float, default=1e-4)
  parser.add_argument("--with_xla_defaults", action="store_true",
                      help="also time this project with XLA's and glibc's defaults")
  parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
  parser.add_argument("--ours", default="", help=argparse.SUPPRESS)  # the inner process
  args = parser.parse_args(argv)
  if args.ours:
    print("RESULT " + json.dumps(ours(json.loads(args.ours))))
    return ""
  config = reduced_config()
  batches = [int(b) for b in args.batches.split(",")]
  threads = [int(n) for n in args.threads.split(",")]
  with tempfile.TemporaryDirectory() as scratch:
    _peer_scratch(os.path.abspath(args.peer_repo), scratch)
    checkpoint = os.path.join(scratch, "checkpoint_0.pth")
    inputs = os.path.join(scratch, "inputs.npz")
    rng = np.random.default_rng(0)
    np.savez(inputs, x=rng.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32),
             t=np.array([1e-5, 0.1, 0.5, 1.0], np.float32),
             z=rng.normal(size=(4, 32, 32, 3)).astype(np.float32))
    peer_cmd = [args.peer_python, "driver.py"]
    ours_cmd = [sys.executable, "-m", "benchmarks.torch_peer", "--peer_repo", args.peer_repo,
                "--peer_python", args.peer_python, "--ours"]
    common = {"config": json.loads(json.dumps(config.to_dict())), "checkpoint": checkpoint,
              "inputs": inputs, "repeats": args.repeats, "batches": batches}
    peer_init = _run(peer_cmd + [json.dumps({**common, "task": "init", "threads": 1})], scratch)
    ours_init = _run(ours_cmd + [json.dumps({**common, "task": "init"})], REPO)
    peer_out, ours_out = np.array(peer_init["output"]), np.array(ours_init["output"])
    equality = {"max_output_diff": float(np.max(np.abs(peer_out - ours_out))),
                "max_output": float(np.max(np.abs(peer_out))),
                "loss": peer_init["loss"], "loss_diff": abs(peer_init["loss"] - ours_init["loss"])}
    if equality["max_output_diff"] > args.tolerance * max(1.0, equality["max_output"]):
      raise RuntimeError(f"The two networks disagree (largest output difference "
                         f"{equality['max_output_diff']:.3g}): the comparison would not be of "
                         "the same work.")
    rows, extras = [], []
    for n in threads:
      env = {"XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}",
             "OMP_NUM_THREADS": str(n)}
      peer = _run(_taskset(n) + peer_cmd + [json.dumps({**common, "task": "time",
                                                        "threads": n})], scratch, env)
      mine = _run(_taskset(n) + ours_cmd + [json.dumps({**common, "task": "time"})], REPO, env)
      defaults = None
      if args.with_xla_defaults:
        defaults = _run(_taskset(n) + ours_cmd + [json.dumps({**common, "task": "time"})], REPO,
                        {**env, cpu_runtime.OPT_OUT: "1", cpu_runtime.HOLD_FREED_MEMORY: "0"})
      for b in batches:
        for case in ("forward", "train"):
          rows.append({"threads": n, "batch": b, "case": case,
                       "ours": float(np.median(mine[str(b)][f"{case}_s"])),
                       "peer": float(np.median(peer[str(b)][f"{case}_s"]))})
          if defaults is not None:
            rows[-1]["ours_xla_defaults"] = float(np.median(defaults[str(b)][f"{case}_s"]))
        extras.append({"threads": n, "batch": b, "ours_first": mine[str(b)]["first_train_s"],
                       "peer_first": peer[str(b)]["first_train_s"],
                       "ours_faults": mine[str(b)]["minor_faults_per_call"],
                       "peer_faults": peer[str(b)]["minor_faults_per_call"],
                       "ours_rss": mine["peak_rss_mib"], "peer_rss": peer["peak_rss_mib"]})
        if defaults is not None:
          extras[-1].update(defaults_first=defaults[str(b)]["first_train_s"],
                            defaults_faults=defaults[str(b)]["minor_faults_per_call"],
                            defaults_rss=defaults["peak_rss_mib"])
  stamp = datetime.datetime.now(datetime.timezone.utc)
  record = {"date": stamp.strftime("%Y-%m-%d %H:%M UTC"), "machine": _cpu_name(),
            "cpus": os.cpu_count(), "command": " ".join(sys.argv),
            "config": CONFIG, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in REDUCED.items()},
            "equality": equality, "rows": rows, "extras": extras,
            "ours_xla_flags": mine["xla_flags"], "ours_cpu_runtime": mine["cpu_runtime"]}
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f"torch_peer_cpu_{stamp.strftime('%Y-%m-%dT%H%MZ')}")
  with open(stem + ".json", "w") as f:
    json.dump(record, f, indent=1)
  table = _markdown(record)
  with open(stem + ".md", "w") as f:
    f.write(table)
  print(table)
  return stem


if __name__ == "__main__":
  main()
