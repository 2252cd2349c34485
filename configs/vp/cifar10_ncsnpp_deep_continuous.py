"""NCSN++ (deep) on CIFAR-10, VP SDE, continuous training.

``python main.py --config configs/vp/cifar10_ncsnpp_deep_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).

The twin of vp/cifar10_ncsnpp_continuous with twice the depth: 8 residual blocks per resolution
instead of 4, trained for 950 k iterations instead of 1.3 M. Data, SDE, sampler and optimizer
are unchanged.
"""

import ml_collections

from configs.vp.cifar10_ncsnpp_continuous import get_config as get_shallow_config


def get_config() -> ml_collections.ConfigDict:
  config = get_shallow_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
