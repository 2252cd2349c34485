"""DDPM on CelebA-HQ at 256 px (Ho et al. 2020).

``python main.py --config configs/vp/ddpm/celebahq.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The LSUN bedroom twin (vp/ddpm/bedroom) on CelebA-HQ: the same 256-px network, training, sampler
and optimizer; only the dataset name differs (data.category, an LSUN field, is left unused).
"""

import ml_collections

from configs.vp.ddpm.bedroom import get_config as get_bedroom_config


def get_config() -> ml_collections.ConfigDict:
  config = get_bedroom_config()
  config.data.dataset = "CelebAHQ"
  return config
