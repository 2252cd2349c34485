"""NCSN++ on CelebA-HQ 256x256, VE SDE, continuous training.

``python main.py --config configs/ve/celebahq_256_ncsnpp_continuous.py --mode train`` with
``--config.data.tfrecords_path=FILE`` (then ``--mode eval`` or ``--mode sample``).

The LSUN bedroom twin (ve/bedroom_ncsnpp_continuous) on CelebA-HQ: the same 256-px network, SDE,
sampler and optimizer; the data come from a TFRecord file of 256-px images
(data.tfrecords_path) and sigma_max is 348 instead of 378.
"""

import ml_collections

from configs.ve.bedroom_ncsnpp_continuous import get_config as get_bedroom_config


def get_config() -> ml_collections.ConfigDict:
  config = get_bedroom_config()
  config.data.dataset = "CelebAHQ"
  config.data.source = "tfrecords"
  config.data.tfrecords_path = ""  # a TFRecord file of 256-px images
  config.model.sigma_max = 348.0
  return config
