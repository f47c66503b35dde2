"""``cxr-triage bench raw|triton|pipeline|int8|torch|all|api``: bounded in count and time, loopback only.

This module only wires the group; the commands live in ``bench.commands``.
"""

from __future__ import annotations

import click

from bench.commands.api import api_command
from bench.commands.model import int8_command, raw_command, torch_command
from bench.commands.stack import all_command, pipeline_command, triton_command


@click.group()
def bench() -> None:
    """Measure inference: raw ONNX Runtime, Triton gRPC, the full pipeline, FP32 vs INT8."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # ORT's graph-cleanup warnings are not results


for _command in (
    raw_command,
    triton_command,
    pipeline_command,
    int8_command,
    torch_command,
    all_command,
    api_command,
):
    bench.add_command(_command)
