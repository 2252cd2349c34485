"""2-D toy: the data of ``configs/toy/gaussian_mixture.py`` as a rectified flow: the linear path, a
velocity-predicting toy MLP trained by flow matching on the VP config's budget, sampled by
integrating the flow (``configs.default_configs.rectified_flow``).

``python main.py --config configs/toy/rectified_flow_gaussian_mixture.py --mode train`` (then
``--mode eval`` or ``--mode sample``).
"""

from configs.default_configs import rectified_flow
from configs.default_toy_configs import get_default_configs


def get_config():
  return rectified_flow(get_default_configs("gaussian_mixture"))
