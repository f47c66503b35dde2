"""``cxr-triage bench``: raw ONNX Runtime, Triton gRPC, the full pipeline, and FP32 vs INT8, in one run.

Modules: ``stats`` (percentiles, ratios, AUROC), ``samples`` (real or generated images), ``raw`` (ONNX Runtime
sessions and timing), ``profile`` (per-operator times), ``triton`` (gRPC load at fixed concurrency), ``stack``
(a private stack on free ports), ``pipeline`` (produce -> worklist, timed), ``cpu`` (where the CPU went),
``variants`` (FP32 or INT8 files), ``int8`` (FP32 vs INT8), ``torch_reference`` (PyTorch CUDA ceiling),
``suite`` (what each subcommand runs), ``report`` (JSON + Markdown), ``cli`` (the click group).
"""
