#!/usr/bin/env bash
# The GPU figures in one go, on any machine with a CUDA GPU (< 10 minutes on
# one modern GPU): SAE training end to end vs its step vs the dense loop,
# the step benchmark, feature extraction, and 1 vs N processes.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_FILE]      (default gpu_check_<host>_<date>.txt)
#
# Every section's output (stdout and stderr) goes to the one file; a section
# that fails is marked FAILED with its exit code and the others still run.
# Each section has its own time limit, so the whole stays under 10 minutes.
# Environment: PYTHON (default: .venv/bin/python, else python3), NPROC (GPUs
# for bench_dist, default: all visible, at most 2).
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${1:-gpu_check_$(hostname -s)_$(date -u +%Y%m%dT%H%M%SZ).txt}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT"

log() { echo "$*" | tee -a "$OUT"; }

section() {  # section LIMIT_SECONDS TITLE CMD...
  local limit=$1 title=$2
  shift 2
  log ""
  log "=== $title ($(date -u +%H:%M:%S) UTC; limit ${limit}s)"
  log "\$ $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" >> "$OUT" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    log "--- ok in $((SECONDS - t0)) s"
  else
    log "--- FAILED (exit $rc) after $((SECONDS - t0)) s"
  fi
}

log "sae1n GPU check on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$PYTHON" - >> "$OUT" 2>&1 <<'EOF'
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible: this script measures GPUs only")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
EOF
if [ $? -ne 0 ]; then log "no GPU: stopped"; exit 1; fi
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT" 2>&1

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
NPROC="${NPROC:-$(( GPUS < 2 ? GPUS : 2 ))}"

# 1. train_sae end to end vs train_step alone vs the dense loop (paper's CONCH shapes,
#    48 x 20,000 patches = 960k train tokens, 12 epochs = 2,820 steps)
section 240 "bench_train_sae.py --device cuda" \
  "$PYTHON" benchmarks/bench_train_sae.py --device cuda --slides 48 --epochs 12 --ref-steps 50
# 2. the step alone: sparse vs dense, the GEMM floor, the 9-config sweep
section 120 "bench_sae.py --device cuda" \
  "$PYTHON" benchmarks/bench_sae.py --device cuda --reps 20
# 3. feature extraction (reading, encoders on random weights)
section 150 "bench_extract.py --device cuda" \
  "$PYTHON" benchmarks/bench_extract.py --device cuda --vit_patches 512
# 4. one process vs NPROC processes (one GPU each)
if [ "$NPROC" -ge 2 ]; then
  section 90 "bench_dist.py --device cuda --nproc $NPROC" \
    "$PYTHON" benchmarks/bench_dist.py --device cuda --nproc "$NPROC" --steps 200
else
  log ""
  log "=== bench_dist.py skipped: one GPU visible (needs 2)"
fi
log ""
log "done at $(date -u +%H:%M:%S) UTC -> $OUT"
