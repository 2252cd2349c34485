"""The modes of ``python main.py --mode MODE``: one module each, one entry in ``run_lib.MODES``.

* ``train``: :mod:`modes.train`, the score model (the loop itself: :mod:`modes.training_loop`);
* ``eval``: :mod:`modes.evaluate`, every snapshot training wrote (or a released file);
* ``sample``: :mod:`modes.sample`, samples of one checkpoint; with ``--inpaint``,
  ``--colorize`` or ``--class_label`` :mod:`modes.controlled_sample`;
* ``figures``: :mod:`modes.make_figures`, pictures of the process;
* ``fid_stats``: :mod:`modes.fid_stats`, FID reference statistics of the training split;
* ``train_classifier``: :mod:`modes.train_classifier`, the noise-conditional classifier of
  classifier guidance;
* ``reflow``: :mod:`modes.reflow`, a second flow trained on the couplings of a trained one;
* ``train_dequantizer``: :mod:`modes.train_dequantizer`, the variational dequantizer of a
  trained score model (for bits/dim).

Each mode module has its function (``train``, ``evaluate``, ...: keyword arguments, what
``run_lib`` exports and scripts call) and ``run(config, workdir, options)``, which reads what
that mode needs of the command line's :class:`Options`. A mode owns what it writes in the workdir;
:mod:`modes.parameters` says which parameters the sampling modes use. Adding a mode is one module
and one ``run_lib.MODES`` entry (plus a ``main.py`` flag per new option).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Options:
  """The command line's options beyond ``--config``, ``--workdir`` and ``--mode``: one field per
  ``main.py`` flag of the same name, with its default (``main.py --help`` says what each
  does)."""
  checkpoint: Optional[str] = None
  num_samples: int = 64
  num_frames: int = 40
  eval_folder: str = "eval"
  sample_folder: str = "sampled"
  allow_config_change: bool = False
  inpaint: Optional[str] = None
  colorize: bool = False
  class_label: Optional[str] = None
  classifier_config: Optional[Any] = None
  classifier_workdir: Optional[str] = None
  guidance_scale: Optional[float] = None
  cfg_weight: Optional[float] = None

  def controlled(self) -> bool:
    """Whether an option of controlled generation (inpainting, colorization, guidance) is
    given."""
    return (self.inpaint is not None or self.colorize or self.class_label is not None
            or self.classifier_config is not None or self.classifier_workdir is not None
            or self.guidance_scale is not None or self.cfg_weight is not None)
