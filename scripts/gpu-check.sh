#!/usr/bin/env bash
# scripts/gpu-check.sh [--gpus IDS] [--python PY] [--out DIR]
#
# The GPU check of one machine that has a GPU and torch in some Python, but neither Docker nor Ray: the GPU tests
# of tests/projects/gpucheck (pinning, device names, PCI ids, matmul, autograd), then, where there is a GPU, the
# torch sample's (tests/projects/torchsample, marked gpu, on the first id), each through matrix-run's host executor
# without Ray (python -m runner.executors.host), pinned to the GPU(s) given (--gpus, else CUDA_VISIBLE_DEVICES,
# else 0), in an environment made from PY (--python, else $PYTHON, else the first python3/python on PATH that
# imports torch) that also sees PY's own packages: nothing is downloaded. Prints the devices, the ids, the test
# counts and the wall time.
#
# Exit: 0 the GPU tests passed; 1 a test failed, or GPU tests were skipped on a machine that has a GPU;
#       2 no GPU here (said on one line: the host executor still ran the suite, and its GPU tests skipped);
#       3 nothing could run (no interpreter, matrix-run not importable, a bad argument).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GPUS="${CUDA_VISIBLE_DEVICES:-0}"
PY="${PYTHON:-}"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) GPUS="${2:?--gpus needs IDS, e.g. 0 or 2,3}"; shift 2 ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 3 ;;
  esac
done
say() { echo "gpu-check: $*"; }

# the interpreter the tests run on: the one holding torch
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then PY="$(command -v "$cand")"; break; fi
  done
  PY="${PY:-$(command -v python3 || true)}"
fi
if [ -z "$PY" ] || ! "$PY" -c "import sys" 2>/dev/null; then
  say "no Python interpreter found; give one with --python PY"; exit 3
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
  say "$PY has no pytest: the tests run on PY's own packages and nothing is downloaded; install pytest into it"; exit 3
fi
TORCH="$("$PY" -c 'import torch; print("torch %s, CUDA %s" % (torch.__version__, torch.version.cuda))' 2>/dev/null)" \
  || TORCH="torch not importable"

# the Python matrix-run itself runs on: its own .venv, else PY (matrix-run's host side needs Python >= 3.11, PyYAML
# and psutil; neither Ray nor Docker)
RUNNER=""
for cand in "$ROOT/.venv/bin/python" "$PY"; do
  if [ -x "$cand" ] && PYTHONPATH="$ROOT" "$cand" -c "import runner.executors.host" 2>/dev/null; then
    RUNNER="$cand"; break
  fi
done
if [ -z "$RUNNER" ]; then
  say "matrix-run's host executor imports neither on $ROOT/.venv/bin/python nor on $PY:"
  PYTHONPATH="$ROOT" "$PY" -c "import runner.executors.host" 2>&1 | tail -n 1
  exit 3
fi

# what this machine has, as the driver sees it (nvidia-smi numbers GPUs as --gpus and Docker do)
GPU_HERE=""
if command -v nvidia-smi >/dev/null; then
  GPU_HERE="$(nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total --format=csv,noheader 2>/dev/null)"
  WHY_NONE="nvidia-smi lists no GPU"
else
  WHY_NONE="nvidia-smi not found"
fi
if [ -n "$GPU_HERE" ]; then
  say "$(printf '%s\n' "$GPU_HERE" | wc -l) GPU(s) on $(hostname):"
  printf '%s\n' "$GPU_HERE" | sed 's/^/gpu-check:   /'
fi
say "pinned to GPU id(s) $GPUS; tests on $PY ($TORCH); matrix-run on $RUNNER"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
host_run() {  # MATRIX IDS: one matrix's host cells through the host executor, pinned to IDS; its output into $log
  PYTHONPATH="$ROOT" "$RUNNER" -m runner.executors.host "$1" --gpus "$2" --python "$PY" --inherit-site-packages \
    ${OUT:+--out "$OUT"} 2>&1 | tee "$log"
  return "${PIPESTATUS[0]}"
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since $1, 0.1 s
started=$(date +%s.%N)
host_run "$ROOT/tests/projects/gpucheck/matrix.yaml" "$GPUS"
code=$?
wall=$(since "$started")
summary="$(grep '^host-run: cell ' "$log" | tail -n 1)"
# a skipped cross-check (no nvidia-smi, an older torch) leaves the GPU tests themselves standing
skipped="$(grep '^host-run:   skipped ' "$log" | grep -vc '(cross-check only)')"

if [ "$code" -ne 0 ]; then
  say "FAILED (exit $code) in $wall s: ${summary:-the host executor reported no cell}"
  [ "$code" -eq 1 ] && exit 1 || exit 3
fi
if [ -z "$GPU_HERE" ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  say "NO GPU on $(hostname) ($WHY_NONE; $TORCH): the host executor ran the suite without Ray in $wall s, and" \
    "$skipped test(s) or test file(s) skipped: ${summary#host-run: }; the torch sample's GPU tests were not run"
  exit 2
fi
if [ "$skipped" -gt 0 ]; then
  say "FAILED in $wall s: $skipped test(s) or test file(s) skipped on a machine with a GPU (see the lines above):" \
    "${summary#host-run: }"
  exit 1
fi
say "gpucheck OK in $wall s: ${summary#host-run: }"

sample_started=$(date +%s.%N)
host_run "$ROOT/tests/projects/gpucheck/torchsample.yaml" "${GPUS%%,*}"
code=$?
sample_wall=$(since "$sample_started")
sample="$(grep '^host-run: cell ' "$log" | tail -n 1)"
if [ "$code" -ne 0 ] || [ "$(grep -c '^host-run:   skipped ' "$log")" -gt 0 ]; then
  say "FAILED (exit $code) in $sample_wall s: the torch sample's GPU tests: ${sample:-no cell reported}"
  [ "$code" -le 1 ] && exit 1 || exit 3
fi
total=$(since "$started")
say "OK in $total s: gpucheck: ${summary#host-run: }; the torch sample's GPU tests: ${sample#host-run: }"
