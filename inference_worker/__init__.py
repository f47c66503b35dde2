"""Inference service: consumes studies from Kafka, scores them on Triton, writes the Redis worklist.

Modules follow the data flow: ``consumer`` (the loop and its commits) -> ``batching`` (event, image, tensor)
-> ``triton_client`` -> ``priority`` / ``predictions`` -> ``worklist`` (Redis) -> ``publisher`` (Kafka
predictions and ``dead_letters``); ``metrics`` observes it all and ``app`` wires it. The served model is
built by ``export`` and installed by ``model_repo``.
"""
