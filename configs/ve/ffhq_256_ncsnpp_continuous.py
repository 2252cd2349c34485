"""NCSN++ on FFHQ 256x256, VE SDE, continuous training.

``python main.py --config configs/ve/ffhq_256_ncsnpp_continuous.py --mode train`` with
``--config.data.tfrecords_path=FILE`` (then ``--mode eval`` or ``--mode sample``).

The CelebA-HQ twin (ve/celebahq_256_ncsnpp_continuous) on FFHQ: the same network, SDE, sampler
and optimizer, and the same TFRecord source of 256-px images (data.tfrecords_path); only the
dataset name differs.
"""

import ml_collections

from configs.ve.celebahq_256_ncsnpp_continuous import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.data.dataset = "FFHQ"
  return config
