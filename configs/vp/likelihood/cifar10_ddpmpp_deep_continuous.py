"""Deep DDPM++ on CIFAR-10, VP SDE, trained for likelihood (106.63 M parameters).

``python main.py --config configs/vp/likelihood/cifar10_ddpmpp_deep_continuous.py --mode train``,
then ``--mode eval`` (bits/dim through the ODE and the bound, uniform dequantization), then
``--mode train_dequantizer`` and ``--mode eval --config.eval.dequantization=variational``.

vp/cifar10_ddpmpp_deep_continuous (8 residual blocks per resolution, 950 k iterations) with
likelihood weighting, importance-sampled times and uniformly dequantized training data, as
Song, Durkan, Murray & Ermon (ScoreFlow) trained it (their 2.83 bits/dim with variational
dequantization; the score_sde paper's 2.99 with standard weighting).
"""

import ml_collections

from configs.default_configs import maximum_likelihood
from configs.vp.cifar10_ddpmpp_deep_continuous import get_config as get_standard_config


def get_config() -> ml_collections.ConfigDict:
  return maximum_likelihood(get_standard_config())
