"""NCSN++ on FFHQ 1024x1024, VE SDE, continuous training."""

import ml_collections

from configs.ve.celebahq_ncsnpp_continuous import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.training.reduce_mean = True
  config.data.dataset = "FFHQ"
  return config
