"""Score networks (and the noise-conditional classifier that guides them). Importing this package
registers every model in ``models.utils.MODELS``; a new network module is imported here."""

# pylint: disable=unused-import
from models import classifier
from models import ddpm
from models import exact_score
from models import mlp
from models import ncsnpp
from models import ncsnv2
from models import tutorial_scorenet
