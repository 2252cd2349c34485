"""VP SDE configs (DDPM++ / NCSN++), after the authors' ``configs/vp``."""
