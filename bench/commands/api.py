"""``cxr-triage bench api``: ``GET /worklist`` latency at a fixed rate (``bench.api``)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("api")
@click.option("--studies", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(1, 2000), help="Requests/s.")
@click.option("--duration", "duration_s", default=15.0, show_default=True, type=click.FloatRange(1, 300))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500), help="Page size.")
@click.option("--out", "out_dir", default="docs/bench", show_default=True, type=click.Path(path_type=Path))
def api_command(studies: int, rate: float, duration_s: float, limit: int, out_dir: Path) -> None:
    """GET /worklist p50/p99 at a fixed rate with STUDIES queued; writes OUT/api.json and OUT/api.md."""
    from bench.api import run_api_bench

    report = run_api_bench(studies=studies, rate=rate, duration_s=duration_s, limit=limit, out_dir=out_dir)
    click.echo(json.dumps(report, indent=2))
