"""DDPM on LSUN church_outdoor at 256 px (Ho et al. 2020).

``python main.py --config configs/vp/ddpm/church.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The bedroom twin (vp/ddpm/bedroom) on the church_outdoor category; the network, training,
sampler and optimizer are unchanged.
"""

import ml_collections

from configs.vp.ddpm.bedroom import get_config as get_bedroom_config


def get_config() -> ml_collections.ConfigDict:
  config = get_bedroom_config()
  config.data.category = "church_outdoor"
  return config
