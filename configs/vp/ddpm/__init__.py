"""DDPM (Ho et al. 2020) configs: the DDPM network, mostly with discrete training."""
