"""NCSN++ on LSUN church_outdoor 256x256, VE SDE, continuous training.

``python main.py --config configs/ve/church_ncsnpp_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).

The bedroom twin (ve/bedroom_ncsnpp_continuous) on the church_outdoor category: the same
network, SDE, sampler and optimizer; only the data and its sigma_max (380 instead of 378) differ.
"""

import ml_collections

from configs.ve.bedroom_ncsnpp_continuous import get_config as get_bedroom_config


def get_config() -> ml_collections.ConfigDict:
  config = get_bedroom_config()
  config.data.category = "church_outdoor"
  config.model.sigma_max = 380.0
  return config
