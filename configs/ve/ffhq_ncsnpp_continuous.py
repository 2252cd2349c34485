"""NCSN++ on FFHQ 1024x1024, VE SDE, continuous training.

``python main.py --config configs/ve/ffhq_ncsnpp_continuous.py --mode train`` with
``--config.data.tfrecords_path=FILE`` (then ``--mode eval`` or ``--mode sample``).

The CelebA-HQ twin (ve/celebahq_ncsnpp_continuous) on FFHQ: the same network, SDE, sampler and
TFRecord source of 1024-px images (data.tfrecords_path); the dataset name differs, and the loss
is averaged (reduce_mean) rather than summed over each image's pixels.
"""

import ml_collections

from configs.ve.celebahq_ncsnpp_continuous import get_config as get_base_config


def get_config() -> ml_collections.ConfigDict:
  config = get_base_config()
  config.training.reduce_mean = True
  config.data.dataset = "FFHQ"
  return config
