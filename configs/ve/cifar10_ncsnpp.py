"""NCSN++ on CIFAR-10, VE SDE, discrete (SMLD) training with integer noise levels.

``python main.py --config configs/ve/cifar10_ncsnpp.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network, data, sampler and optimizer are those of the continuous twin
(ve/cifar10_ncsnpp_continuous); only the training differs: the discrete SMLD loss over the
model.num_scales noise levels, which conditions the network on the integer level index and so
embeds it with the positional (sinusoidal) embedding instead of Fourier features of log sigma.
"""

import ml_collections

from configs.ve.cifar10_ncsnpp_continuous import get_config as get_continuous_config


def get_config() -> ml_collections.ConfigDict:
  config = get_continuous_config()
  config.training.continuous = False
  config.model.embedding_type = "positional"
  return config
