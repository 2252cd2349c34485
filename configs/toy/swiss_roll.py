"""2-D toy: swiss roll data, VP SDE, continuous DSM, toy MLP. Trains on a CPU in a minute."""

from configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs("swiss_roll")
