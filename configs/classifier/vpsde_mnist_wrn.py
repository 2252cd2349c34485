"""Noise-conditional classifier for MNIST under the VP SDE of ``configs/vpsde_mnist.py``.

Train it (the two commands are the same run; guidance's ``--classifier_workdir`` then names the
workdir)::

    python main.py --config configs/classifier/vpsde_mnist_wrn.py --mode train_classifier \\
      --workdir runs/clf
    python -m classifier_training --config configs/classifier/vpsde_mnist_wrn.py --workdir runs/clf

The data, their scaling (``data.centered``) and the SDE (``training.sde`` and the SDE's fields of
``model``) are those of the score model it guides, so the classifier sees the same ``x(t)`` and
the same noise label (``999 t``, embedded sinusoidally). Network: a WRN-10-2 (one block per
group, width 2; 0.74 M parameters) on 28x28x1.
"""

import ml_collections

from configs import vpsde_mnist
from configs.classifier import classifier_of


def get_config() -> ml_collections.ConfigDict:
  config = classifier_of(vpsde_mnist.get_config(), blocks_per_group=1, channel_multiplier=2,
                         embedding_type="positional", n_iters=4000, snapshot_freq=1000)
  config.optim.lr = 1e-3
  config.optim.warmup = 200
  return config
