"""NCSN (v1) on CIFAR-10 with NCSNv2's techniques 1, 2 and 4.

``python main.py --config configs/ve/ncsn/cifar10_124.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The v1 twin (ve/ncsn/cifar10) with NCSNv2's noise schedule and sampler: sigma_max 50 from the
data (technique 1) instead of 1, a geometric ladder of 232 levels (technique 2) instead of 10,
and 5 Langevin steps per level with a tuned step size (technique 4, snr 0.176) instead of 100.
The network, its conditioning on the level index (scale_by_sigma False) and the optimizer are
unchanged.
"""

import ml_collections

from configs.ve.ncsn.cifar10 import get_config as get_v1_config


def get_config() -> ml_collections.ConfigDict:
  config = get_v1_config()
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.176
  config.model.sigma_max = 50.0
  config.model.num_scales = 232
  return config
