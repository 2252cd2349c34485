"""Deep DDPM++ on MNIST, VP SDE, trained for likelihood.

``python main.py --config configs/vp/likelihood/mnist_ddpmpp_deep_continuous.py --mode train``,
then ``--mode eval`` (bits/dim through the ODE and the bound, uniform dequantization), then
``--mode train_dequantizer`` and ``--mode eval --config.eval.dequantization=variational``.

vpsde_mnist's network made deep as the CIFAR-10 ``_deep`` configs are (twice the residual blocks
per resolution: 4), with likelihood weighting, importance-sampled times and uniformly
dequantized training data (``configs.default_configs.maximum_likelihood``).
"""

import ml_collections

from configs.default_configs import maximum_likelihood
from configs.vpsde_mnist import get_config as get_standard_config


def get_config() -> ml_collections.ConfigDict:
  config = get_standard_config()
  config.model.num_res_blocks = 4
  return maximum_likelihood(config)
