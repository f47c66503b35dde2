"""Inference service: consumes studies from Kafka, scores them on Triton, writes the Redis worklist.

Modules follow the data flow: ``consumer`` (the loop, its commits, pause and backoff) -> ``batching`` (event,
image, tensor) -> ``triton_client`` -> ``priority`` / ``predictions`` / ``cams`` -> ``worklist`` (Redis) ->
``publisher`` (Kafka predictions and ``dead_letters``); ``metrics`` and ``lag`` observe it all, ``config``
holds its settings and ``app`` wires it. The served model (export, signature, repository, Triton configs and
the Python-backend runner) lives in ``cxr_triage.model``; ``bench.tuning`` measures the serving settings.
docs/serving.md explains the whole.
"""
