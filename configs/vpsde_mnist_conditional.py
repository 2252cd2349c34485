"""MNIST, VP SDE, class-conditional DDPM++-style network for classifier-free guidance.

``configs/vpsde_mnist.py`` whose network also reads the digit (``model.num_classes = 10``: a
learned class embedding added to the noise-level embedding), trained on the data's labels with
10 % of them dropped to the null label, so that one network learns ``s(x, t, y)`` and the
unconditional ``s(x, t)``.

``python main.py --config configs/vpsde_mnist_conditional.py --mode train`` (then ``--mode eval``
or ``--mode sample``). Sample digits with ``--mode sample --class_label=K`` (or ``all``)
``--cfg_weight=w``; without ``--class_label`` it is an unconditional model.
"""

from configs import vpsde_mnist


def get_config():
  config = vpsde_mnist.get_config()
  config.model.num_classes = 10
  config.training.label_dropout = 0.1
  return config
