"""NCSN++ on FFHQ 256x256, VE SDE, continuous training."""

import ml_collections

from configs.ve.celebahq_256_ncsnpp_continuous import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.data.dataset = "FFHQ"
  return config
