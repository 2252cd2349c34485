"""Defaults for the 2-D toy problems: a small MLP that trains on a laptop CPU in a minute or two.

The VP SDE with continuous training, PC sampling down to t = 1e-3 and gradient clipping at 1 come
from the shared defaults (default_configs).
"""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs(dataset: str) -> ml_collections.ConfigDict:
  config = get_base_configs()
  training = config.training
  training.reduce_mean = True
  training.batch_size = 512
  training.n_iters = 4000
  training.n_jitted_steps = 50
  training.log_freq = 200
  training.eval_freq = 500
  training.snapshot_freq = 4000         # one snapshot, the trained model (eval evaluates it)
  training.snapshot_freq_for_preemption = 500

  sampling = config.sampling
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"

  evaluate = config.eval
  evaluate.begin_ckpt = 1               # every snapshot the run wrote
  evaluate.end_ckpt = 1000
  evaluate.batch_size = 2000
  # Bits/dim of the first 2000 of the 10000 test points (standard error ~0.015 bits): a 2-D
  # solve at rtol = atol = 1e-5 takes ~800 network evaluations, 1.5 min per 5000 points on 2 cores.
  evaluate.bpd_num_examples = 2000
  evaluate.num_samples = 2000
  evaluate.enable_bpd = True
  evaluate.bpd_num_repeats = 1
  evaluate.hutchinson_type = "exact"   # two dimensions: the exact divergence is cheap
  evaluate.dequantization = "none"     # points in the plane are continuous data

  data = config.data
  data.dataset = dataset
  data.source = "toy"
  data.dim = 2
  data.random_flip = False
  data.centered = True

  model = config.model
  model.name = "toy_mlp"
  model.nf = 128
  model.num_blocks = 3
  model.nonlinearity = "swish"
  model.dropout = 0.0
  model.num_scales = 500
  model.ema_rate = 0.999

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 100
  config.seed = 0
  return config
