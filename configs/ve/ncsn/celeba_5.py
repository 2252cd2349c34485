"""NCSN (v1) on CelebA with NCSNv2's technique 5 only (EMA of the weights).

``python main.py --config configs/ve/ncsn/celeba_5.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The v1 twin (ve/ncsn/celeba) with an exponential moving average of the weights at rate 0.999
(technique 5) instead of none (rate 0); the network, its 10 noise levels, the sampler and the
optimizer are unchanged.
"""

import ml_collections

from configs.ve.ncsn.celeba import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.ema_rate = 0.999
  return config
