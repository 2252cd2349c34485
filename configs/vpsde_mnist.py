"""MNIST, VP SDE, continuous DSM, DDPM++-style network (see default_mnist_configs).

Sampling: the Euler-Maruyama predictor, no corrector.

``python main.py --config configs/vpsde_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

from configs.default_mnist_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "vpsde"
  config.training.continuous = True
  config.data.centered = True
  config.sampling.predictor = "euler_maruyama"
  config.sampling.corrector = "none"
  config.sampling.eps = 1e-3
  return config
