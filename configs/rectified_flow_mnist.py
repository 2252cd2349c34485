"""MNIST as a rectified flow: the network, data and optimizer of ``configs/vpsde_mnist.py`` on
the linear path ``x(t) = (1 - t) x0 + t z``, the network predicting the velocity ``z - x0``,
trained by flow matching and sampled by integrating the flow (adaptive ODE); see
``configs.default_configs.rectified_flow``.

``python main.py --config configs/rectified_flow_mnist.py --mode train`` (then ``--mode eval``
or ``--mode sample``; ``--config.sampling.method=ddim --config.sampling.schedule=uniform_t``
with ``--config.sampling.steps=k`` is k-step Euler).
"""

from configs import vpsde_mnist
from configs.default_configs import rectified_flow


def get_config():
  return rectified_flow(vpsde_mnist.get_config())
