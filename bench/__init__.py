"""``cxr-triage bench``: raw ONNX Runtime, Triton gRPC, the full pipeline, FP32 vs INT8, and the worklist API.

Not part of any service (and not in the service image): it may import them all. Modules: ``stats``
(percentiles, ratios, AUROC), ``samples`` (real or generated images), ``raw`` (ONNX Runtime sessions and
timing), ``profile`` (per-operator times), ``triton`` (gRPC load at fixed concurrency), ``stack`` (a private
stack on free ports), ``pipeline`` (produce -> worklist, timed), ``cpu`` (where the CPU went), ``variants``
(FP32 or INT8 files), ``int8`` (FP32 vs INT8), ``torch_reference`` (PyTorch CUDA ceiling), ``suite`` (what
each subcommand runs), ``report`` (the JSON document and its targets) and ``report_markdown`` (its Markdown
page), ``api`` (``GET /worklist`` latency), ``tuning`` (Triton thread and instance settings,
``python -m bench.tuning``); ``cli`` wires the click group, whose commands are in ``commands``.
"""
