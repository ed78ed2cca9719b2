#!/usr/bin/env bash
# Every lrmesh benchmark on a CUDA machine in one command, printed as one table (aim: under 8 minutes):
#   bench/gpu.sh            the released sizes on the GPU
#   bench/gpu.sh --dry      tiny sizes on the CPU in seconds (run by tests/test_bench_gpu.py so it cannot rot)
#   bench/gpu.sh --only reconstruct fit
# The rows live in bench/gpu.py (ROWS); put the table in the README's Benchmarks section with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" bench/gpu.py "$@"
