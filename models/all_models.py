"""Imports every model module so that its ``@register_model`` runs. Add new modules here."""

# pylint: disable=unused-import
from models import ddpm
from models import mlp
from models import ncsnpp
from models import ncsnv2
