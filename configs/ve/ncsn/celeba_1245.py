"""NCSN (v1) on CelebA with NCSNv2's techniques 1, 2, 4 and 5 (as _124, plus EMA).

The network conditions its normalizations on the noise-level index and outputs the score
itself (scale_by_sigma False); it has model.num_scales classes (models.ncsnv2.ncsn_from_config)."""

import ml_collections

from configs.ve.ncsn.celeba_124 import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.model.ema_rate = 0.999
  return config
