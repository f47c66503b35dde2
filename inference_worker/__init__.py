"""Inference service: consumes studies from Kafka, scores them on Triton, writes the Redis worklist.

Modules follow the data flow: ``consumer`` (the loop, its commits, pause and backoff) -> ``batching`` (event,
image, tensor) -> ``triton_client`` -> ``priority`` / ``predictions`` / ``cams`` -> ``worklist`` (Redis) ->
``publisher`` (Kafka predictions and ``dead_letters``); ``metrics`` and ``lag`` observe it all, ``config``
holds its settings and ``app`` wires it. The served model is built by ``export``, checked by ``signature``,
installed and switched by ``model_repo`` (configs from ``model_config``; the Python-backend runner is
``triton_model/model.py``); ``tuning`` measures the serving settings. docs/serving.md explains the whole.
"""
