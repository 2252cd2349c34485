"""Random weights for the FID Inception network (``evaluation.inception``), so that the tests
need no download: a state dict with pytorch-fid's names and shapes."""

import numpy as np

from evaluation import inception


def random_state_dict(seed: int = 0) -> dict:
  """A state dict with pytorch-fid's names and shapes (its ``num_batches_tracked`` counters
  too), scaled so activations stay O(1) through the 94 convolutions."""
  rng = np.random.default_rng(seed)
  state_dict = {}
  for name, shape in inception.state_dict_shapes().items():
    if name.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif name.endswith("bn.weight"):
      value = rng.uniform(0.8, 1.2, shape)
    elif name.endswith("conv.weight"):
      value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    else:
      value = rng.normal(size=shape) * 0.1
    state_dict[name] = value.astype(np.float32)
    if name.endswith("bn.running_var"):
      state_dict[name.replace("running_var", "num_batches_tracked")] = np.asarray(0, np.int64)
  return state_dict
