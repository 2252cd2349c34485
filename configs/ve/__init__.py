"""VE SDE configs (SMLD / NCSN++), after the authors' ``configs/ve``."""
