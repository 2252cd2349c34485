#!/usr/bin/env bash
# Runs the speed suite or an experiment on the lent accelerator machine, from the repository root:
#
#   bash gpu/run.sh [--only GROUPS_OR_CASE_PREFIXES] [other benchmarks.run flags]
#   bash gpu/run.sh time_to_bpd|bf16_curves|mnist_result|sampler_nfe [that module's flags]
#
# Missing Python packages (the lent H100/H200 image has jax, flax, optax, orbax, diffrax and absl,
# but not ml_collections) travel as wheels in .whl/ (ignored by git), made on the host with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# and are installed here into /tmp/site. Results go to $OUT (the device tool's return folder)
# when it is set, else benchmarks/results (the speed suite) or experiments/results. The speed
# suite runs each case in its own process (--isolate), so every peak-memory figure is that case's
# own. One call must end within the tool's 10 minutes: split the suite with --only (see
# benchmarks/README.md and gpu/README.md).
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
python3 -c "import jax; print(jax.__version__, jax.devices())"
case "${1:-}" in
  time_to_bpd|bf16_curves|mnist_result|sampler_nfe)
    module="$1"; shift
    exec python3 -m "experiments.$module" --out "${OUT:-experiments/results}" "$@" ;;
  *) exec python3 -m benchmarks.run --isolate --out "${OUT:-benchmarks/results}" "$@" ;;
esac
