"""NCSN (v1) on CelebA with NCSNv2's techniques 1, 2, 4 and 5.

``python main.py --config configs/ve/ncsn/celeba_1245.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The twin with techniques 1, 2 and 4 (ve/ncsn/celeba_124) plus technique 5: an exponential moving
average of the weights at rate 0.999 instead of none (rate 0). The network still conditions on
the noise-level index (scale_by_sigma False); everything else is unchanged.
"""

import ml_collections

from configs.ve.ncsn.celeba_124 import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.ema_rate = 0.999
  return config
