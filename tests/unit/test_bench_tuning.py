"""The interleaved timing of the thread-tuning tool (bench.tuning), with fake calls."""

from __future__ import annotations

import time

from bench.tuning import interleave, report


def test_every_setting_is_timed_in_every_round_under_the_same_conditions() -> None:
    order: list[str] = []

    def call(name: str, seconds: float) -> None:
        order.append(name)
        time.sleep(seconds)

    calls = {
        ("triton", "fast", 8, 1, False): lambda: call("fast", 0.002),
        ("triton", "slow", 8, 2, False): lambda: call("slow", 0.01),
    }
    results = {t.case: t for t in interleave(calls, rounds=3, requests=2)}
    assert order[:2] == ["fast", "slow"]  # one warm-up call each, not timed
    rounds = [order[2 + i * 6 : 2 + (i + 1) * 6] for i in range(3)]
    assert all(sorted(r) == ["fast"] * 2 + ["slow"] * 4 for r in rounds)  # each setting in every round
    assert results["slow"].median_ms >= 10 and results["fast"].median_ms < results["slow"].median_ms
    # two clients at once: 12 calls of batch 8 take at least 6 x 10 ms of wall time
    assert 0 < results["slow"].images_per_s <= 8 * 12 / 0.06
    text = report(list(results.values()), input_size=224, rounds=3)
    assert "triton       slow" in text and "input 224px, 3 interleaved rounds" in text
