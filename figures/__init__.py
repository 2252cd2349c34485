"""Figures of samplers, SDEs and runs: reverse-process animations, trajectories, comparisons,
encodings, training curves.

Plotting functions over NumPy arrays the caller computes (no model, SDE or config code here);
each writes one file through :func:`outputs.atomic_write_bytes` and returns its path. Image data
are ``[B, H, W, C]`` in [0, 1] with ``C`` 1 (grayscale) or 3 (RGB), shown clipped to [0, 1];
2-D toy data are ``[N, 2]``. Titles are the caller's, typically :func:`run_title`'s
"step, sampler, NFE".

matplotlib is imported inside the functions, so that the rest of the project runs without it.
Figures are drawn on the non-interactive Agg canvas directly, not through ``pyplot``: nothing is
shown, no global backend is switched, and no figure outlives its call (pyplot keeps none open).
Every figure is drawn in matplotlib's default style plus this package's sizes, whatever the
user's matplotlibrc, so the same inputs give the same bytes.

One module per kind of figure, each a public function that writes the file and a ``_draw_*``
that makes the matplotlib figure: :mod:`figures.process` (animations of the reverse process),
:mod:`figures.trajectories`, :mod:`figures.comparison` (samplers side by side),
:mod:`figures.toy` (2-D marginals and samples against data), :mod:`figures.flow_paths` (2-D
flow trajectories, before and after reflow), :mod:`figures.encoder` and
:mod:`figures.curves` (training curves); :mod:`figures.canvas` holds what they share.
"""

from figures.canvas import DPI, available, run_title
from figures.comparison import Panel, sampler_comparison
from figures.curves import training_curves
from figures.encoder import encoder_figure
from figures.flow_paths import flow_paths
from figures.process import process_animation
from figures.toy import Density, toy_marginals, toy_samples_vs_data
from figures.trajectories import coordinate_trajectories

__all__ = ["DPI", "Density", "Panel", "available", "coordinate_trajectories", "encoder_figure",
           "flow_paths", "process_animation", "run_title", "sampler_comparison", "toy_marginals",
           "toy_samples_vs_data", "training_curves"]
