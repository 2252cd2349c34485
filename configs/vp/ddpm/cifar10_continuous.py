"""DDPM architecture on CIFAR-10 trained with the continuous VP SDE.

``python main.py --config configs/vp/ddpm/cifar10_continuous.py --mode train`` (then ``--mode eval``
or ``--mode sample``).

The network, data and optimizer are those of the discrete twin (vp/ddpm/cifar10); only the
training and sampler differ: continuous-time denoising score matching on the VP SDE, sampled
with the Euler-Maruyama discretization of the reverse SDE instead of DDPM's ancestral sampling.
"""

import ml_collections

from configs.vp.ddpm.cifar10 import get_config as get_discrete_config


def get_config() -> ml_collections.ConfigDict:
  config = get_discrete_config()
  config.training.continuous = True
  config.sampling.predictor = "euler_maruyama"
  return config
