#!/usr/bin/env bash
# Bounded AMP-vs-FP32 study on one GPU, well under 8 minutes: DenseNet121 at 224 px, batch 32, 40 steps per
# variant (fp32, bf16, fp16), one Ray Train worker with NCCL. Results go to a private SQLite MLflow store and a
# report: $OUT/experiments-gpu.md (+ PNG). Needs the project's Python environment (torch with CUDA, ray, mlflow).
#
#   trainer/gpu.sh                      # DATA defaults to ../shared/datasets/cxr-public, else synthetic images
#   DATA=/data/cxr OUT=/tmp/gpu trainer/gpu.sh
#
#   trainer/gpu.sh chexpert             # the CheXpert recipe (trainer/recipes.py) and the check of its figure:
#   CHEXPERT=/data/CheXpert-v1.0-small RECIPE=chexpert-densenet121 WEIGHTS=densenet121-a639ec97.pth \
#     GPUS=8 EXPECT=0.88 BUDGET_S=36000 trainer/gpu.sh chexpert
#   trains the recipe on CheXpert's train.csv (DDP over GPUS, FSDP for chexpert-vit-large-fsdp), scores its
#   valid.csv and fails unless the mean AUROC over the 5 competition findings reaches EXPECT (literature:
#   ~0.90 for DenseNet121 from ImageNet at 320 px). Without CHEXPERT it exits 2 and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-amp}

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

if [ "$MODE" = chexpert ]; then
  CHEXPERT=${CHEXPERT:-}
  if [ -z "$CHEXPERT" ] || [ ! -f "$CHEXPERT/valid.csv" ]; then
    echo "gpu.sh chexpert: set CHEXPERT to a CheXpert folder with train.csv and valid.csv" >&2
    exit 2
  fi
  export CXR_HOME="$OUT/home" CXR_MLFLOW_TRACKING_URI=${CXR_MLFLOW_TRACKING_URI:-sqlite:///$OUT/mlflow.db}
  export CXR_EVAL_DATA="$CHEXPERT" MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
  RECIPE=${RECIPE:-chexpert-densenet121}
  args=(--data "$CHEXPERT" --recipe "$RECIPE" --workers "${GPUS:-1}" --gpu --json
        --max-minutes "$(( ${BUDGET_S:-36000} / 60 ))" --verify exists)
  [ -n "${WEIGHTS:-}" ] && args+=(--weights "$WEIGHTS")
  "$PY" -m cxr_triage train "${args[@]}" | tee "$OUT/chexpert-train.json"
  run_id=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['run_id'])" "$OUT/chexpert-train.json")
  # CheXpert's valid.csv is its own "val" split; the new challenger is scored as Triton would serve it (ONNX).
  echo "gpu.sh chexpert: MLflow run $run_id"
  "$PY" -m cxr_triage evaluate --data "$CHEXPERT" --split val --json \
    --model "models:/${CXR_REGISTERED_MODEL:-cxr_classifier}@challenger" \
    > "$OUT/chexpert-eval.json"
  "$PY" - "$OUT/chexpert-eval.json" "${EXPECT:-0.88}" <<'PYEOF'
import json, sys
result, expect = json.load(open(sys.argv[1])), float(sys.argv[2])
got = result["auroc_competition"]
print(f"CheXpert valid: competition mean AUROC {got} (expected >= {expect}), abnormal AUROC {result['auroc_abnormal']}")
sys.exit(0 if got is not None and got >= expect else 1)
PYEOF
  exit $?
fi

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
