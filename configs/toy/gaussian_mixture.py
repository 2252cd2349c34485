"""2-D toy: gaussian mixture data, VP SDE, continuous DSM, toy MLP. Trains on a CPU in a minute."""

from configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs("gaussian_mixture")
