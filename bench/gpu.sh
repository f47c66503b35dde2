#!/usr/bin/env bash
# The inference benchmark on a GPU machine, in under 8 minutes: ONNX Runtime with the CUDA provider (and
# TensorRT when this onnxruntime has it), FP32 vs INT8, a PyTorch CUDA reference, and, where the machine
# can run the local stack (Java for Kafka, redis-server, tritonserver), Triton and the full pipeline.
#
#   bash bench/gpu.sh                      # results under $OUT (the device tool's folder) or docs/bench/gpu
#
# The project's GPU machines (see the device tool's KINDS.md) have python3 3.12 with torch, torchvision, onnx,
# numpy, pillow and click, but a CPU-only onnxruntime and no pydantic, Kafka or Redis: nothing can be
# fetched there, so what is missing travels as wheels in .whl/ (git-ignored), prepared on the dev machine:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
#     annotated-types==0.8.0 typing-inspection==0.4.5
#
# and the device call names `.whl` in `carry`. onnxruntime-gpu itself is a ~250 MB wheel, over the 64 MiB a
# device call can carry: without it the ONNX Runtime rows run on the CPU provider (all cores) and the
# PyTorch rows give the GPU numbers. Each step has its own time limit; a failed step is recorded and the
# rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="${BENCH_OUT:-${OUT:-docs/bench/gpu}}"
mkdir -p "$RESULTS"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
STARTED=$(date +%s)
LOG="$RESULTS/gpu-bench.log"
: >"$LOG"

say() { echo "[$(($(date +%s) - STARTED))s] $*" | tee -a "$LOG"; }

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing carried wheels from .whl/"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cxr-site .whl/*.whl \
    >>"$LOG" 2>&1 || say "wheel install failed (see log)"
  export PYTHONPATH="/tmp/cxr-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The package is not pip-installed on a bare GPU machine: run it from the checkout.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 CXR_LOG_LEVEL="${CXR_LOG_LEVEL:-WARNING}"
export CXR_INITIAL_MODEL_INPUT_SIZE="${CXR_INITIAL_MODEL_INPUT_SIZE:-224}"
THREADS="${BENCH_THREADS:-$(nproc)}"

{
  echo "# environment"
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  "$PY" - <<'EOF' 2>&1
import platform
print("python", platform.python_version())
for name in ("onnxruntime", "torch", "onnx", "numpy", "pydantic", "tritonclient", "confluent_kafka", "redis"):
    try:
        module = __import__(name)
        extra = ""
        if name == "onnxruntime":
            extra = " providers=" + ",".join(module.get_available_providers())
        if name == "torch":
            extra = f" cuda={module.cuda.is_available()}"
        print(name, getattr(module, "__version__", "?") + extra)
    except Exception as exc:  # a report line, not a failure
        print(name, "MISSING", type(exc).__name__)
EOF
  for tool in java redis-server; do command -v "$tool" >/dev/null && echo "$tool present" || echo "$tool MISSING"; done
} | tee "$RESULTS/environment.txt" | tee -a "$LOG"

PROVIDERS=$("$PY" -c 'import onnxruntime as o; p = o.get_available_providers(); print(",".join(x for x in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if x in p))' 2>/dev/null)
# The checkout is not installed here, so `cxr-triage` would find no subcommands (they are entry points):
# `python -m bench` runs the bench group itself (log level from CXR_LOG_LEVEL). BENCH_CLI replaces that
# launcher, e.g. BENCH_CLI="cxr-triage bench" where the package is installed.
read -r -a CXR <<<"${BENCH_CLI:-$PY -m bench}"

step() {  # step NAME SECONDS ARGS...: one bench subcommand, JSON to $RESULTS/NAME.json, bounded in time
  local name=$1 seconds=$2
  shift 2
  say "step $name (limit ${seconds}s): ${CXR[*]} $*"
  if timeout --kill-after=10 "$seconds" "${CXR[@]}" "$@" --json >"$RESULTS/$name.json" 2>>"$LOG"; then
    say "step $name done"
  else
    say "step $name FAILED or timed out (exit $?)"
  fi
}

# 1. PyTorch eager on the GPU (FP32, FP16): the ceiling for this network, with or without onnxruntime-gpu.
step torch_cuda 90 torch --batch 1 --batch 8 --batch 32

# 2. Raw ONNX Runtime at batch 1, 8, 32: GPU providers when present (TensorRT builds engines: longer limit).
if [[ "$PROVIDERS" == *TensorrtExecutionProvider* ]]; then
  step raw_tensorrt 180 raw --providers TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider --max-seconds 5
fi
if [[ "$PROVIDERS" == *CUDAExecutionProvider* ]]; then
  step raw_cuda 90 raw --providers CUDAExecutionProvider,CPUExecutionProvider --max-seconds 5
  step raw_cuda_int8 120 raw --variant int8 --providers CUDAExecutionProvider,CPUExecutionProvider --max-seconds 5
else
  say "onnxruntime has no CUDA provider here (carry onnxruntime-gpu to get one): raw rows run on the CPU provider"
fi
step raw_cpu 90 raw --providers cpu --threads "$THREADS" --max-seconds 5

# 3. FP32 vs INT8 on the real sample (CPU provider, every core): speed-up, probabilities, AUROC.
step int8_cpu 150 int8 --threads "$THREADS" --rounds 8

# 4. Triton and the full pipeline need the local stack: Java (Kafka), redis-server and nvidia-pytriton.
if command -v java >/dev/null && command -v redis-server >/dev/null && "$PY" -c 'import pytriton, confluent_kafka, redis, tritonclient' 2>/dev/null; then
  step all 300 all --providers auto --threads "$THREADS" --out "$RESULTS" --burst-n 128 --steady-n 20 --raw-seconds 5 --triton-seconds 5
else
  say "skipping Triton and pipeline: this machine cannot run the local stack (needs java, redis-server, nvidia-pytriton, confluent-kafka)"
fi

say "finished in $(($(date +%s) - STARTED)) s; results in $RESULTS"
ls -la "$RESULTS" | tee -a "$LOG"
