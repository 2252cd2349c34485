"""MNIST, sub-VP SDE, continuous DSM, DDPM++-style network (see default_mnist_configs).

``python main.py --config configs/subvpsde_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network, data, sampler and optimizer are those of the VP twin (vpsde_mnist); only the SDE
differs.
"""

from configs.vpsde_mnist import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.sde = "subvpsde"
  return config
