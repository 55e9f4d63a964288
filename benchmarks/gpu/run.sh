#!/usr/bin/env bash
# The GPU run kit's entry point: the engine's GPU measurements in under 5 minutes on a lent GPU.
#
# Why a script of its own: GPU machines are lent rarely and for minutes, run Python 3.12 with torch and transformers
# but no Ray, pydantic or hub access, and only the working tree travels. So this runs benchmarks/gpu/kit.py with
# random-weight backbones of the paper's shapes, writes results.json, run.log and benchmarks-gpu.md to the output dir
# ($OUT if set, which is what comes back from a lease, else benchmarks/gpu/results/), and copies the report to
# docs/benchmarks-gpu.md. `--dry-run` runs the same code on tiny configs on the CPU in seconds (CI) and leaves docs/
# alone. Any other arguments go to kit.py (see `python3 benchmarks/gpu/kit.py --help`).
#
#   bash benchmarks/gpu/run.sh              # on the GPU machine
#   bash benchmarks/gpu/run.sh --dry-run    # anywhere, CPU only
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${OUT:-$here/results}"
mkdir -p "$out"
dry=0
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then dry=1; fi
done

# Nothing may reach a hub (there is none to reach on the GPU machine); keep the tokenizer single-threaded and quiet.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Tiny models gain nothing from CPU threads, and on a shared CI machine spinning threads cost 5x in wall time.
if [[ "$dry" == 1 ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

cd "$root"
if [[ "$dry" == 0 ]] && command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/run.log"
else
  : >"$out/run.log"
fi
# The hard ceiling: 300 s in all. kit.py itself skips what is left past --budget-s (240 s by default).
timeout --kill-after=10 "${KIT_TIMEOUT_S:-300}" python3 benchmarks/gpu/kit.py --out "$out" "$@" 2>&1 \
  | tee -a "$out/run.log"

if [[ "$dry" == 0 ]]; then
  mkdir -p docs
  cp "$out/benchmarks-gpu.md" docs/benchmarks-gpu.md
  echo "run.sh: report in $out/benchmarks-gpu.md and docs/benchmarks-gpu.md" >&2
else
  echo "run.sh: dry run; report in $out/benchmarks-gpu.md (docs/ untouched)" >&2
fi
