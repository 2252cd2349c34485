"""sub-VP SDE configs: the continuous VP twins with ``training.sde = 'subvpsde'``."""
