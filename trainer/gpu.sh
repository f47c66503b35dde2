#!/usr/bin/env bash
# Bounded AMP-vs-FP32 study on one GPU, well under 8 minutes: DenseNet121 at 224 px, batch 32, 40 steps per
# variant (fp32, bf16, fp16), one Ray Train worker with NCCL. Results go to a private SQLite MLflow store and a
# report: $OUT/experiments-gpu.md (+ PNG). Needs the project's Python environment (torch with CUDA, ray, mlflow).
#
#   trainer/gpu.sh                      # DATA defaults to ../shared/datasets/cxr-public, else synthetic images
#   DATA=/data/cxr OUT=/tmp/gpu trainer/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-$PWD/.stack/gpu}
BUDGET_S=${BUDGET_S:-420}
mkdir -p "$OUT"

"$PY" - <<'PYEOF'
import sys
try:
    import mlflow, ray, torch  # noqa: F401
except ImportError as exc:
    sys.exit(f"gpu.sh: the project's dependencies are missing ({exc}); run it with PYTHON=<the venv's python>")
if not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device visible to torch")
print(f"GPU: {torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
PYEOF

DATA=${DATA:-../shared/datasets/cxr-public}
if [ ! -d "$DATA/images" ]; then
  # No real images on this machine: speed and memory do not depend on content, so synthetic ones do.
  DATA="$OUT/synthetic"
  "$PY" - "$DATA" <<'PYEOF'
import csv, sys
from pathlib import Path
import numpy as np
from PIL import Image
from cxr_triage.labels import LABELS
root = Path(sys.argv[1]); (root / "images").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
with (root / "labels.csv").open("w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["Path", "Frontal/Lateral", *LABELS, "patient_id"])
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (320, 320), dtype=np.uint8), mode="L").save(root / f"images/{i}.png")
        writer.writerow([f"images/{i}.png", "Frontal", *rng.choice(["1", "0"], size=len(LABELS)), f"p{i}"])
print(f"synthetic data: {root}")
PYEOF
fi

RAY_TMP=$(mktemp -d /tmp/rayXXXX)
trap 'rm -rf "$RAY_TMP"' EXIT
export CXR_HOME="$OUT/home" CXR_MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" CXR_RAY_TMPDIR="$RAY_TMP"
export CXR_RAY_NUM_CPUS=${CXR_RAY_NUM_CPUS:-8} MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

start=$(date +%s)
timeout "$BUDGET_S" "$PY" -m trainer.experiments run --gpu --data "$DATA" 2>&1 | tail -n 40 | tee "$OUT/run.log"
"$PY" -m trainer.experiments report --out "$OUT/experiments-gpu.md"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>/dev/null || true
echo "gpu.sh: done in $(( $(date +%s) - start )) s; report: $OUT/experiments-gpu.md"
