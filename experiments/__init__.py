"""Studies that produce results (``python -m experiments.<name>``; experiments/README.md): time
to a test bits/dim, the MNIST result, sample quality against NFE, bf16 loss curves. Their result
files go to ``experiments/results/``; the speed suite is ``benchmarks/``."""
