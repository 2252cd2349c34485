"""Score networks. Importing this package registers every model with ``models.utils``."""
