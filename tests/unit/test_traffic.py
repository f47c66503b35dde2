"""``--rate`` / ``--burst``: parsing and the token bucket's pacing, on a fake clock."""

from __future__ import annotations

import pytest

from producers.traffic import TokenBucket, parse_rate


@pytest.mark.parametrize(("text", "per_s"), [("5", 5.0), ("5/s", 5.0), ("30/min", 0.5), ("360/h", 0.1)])
def test_rates_parse(text: str, per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize("text", ["0", "-1/s", "fast", "5/day"])
def test_bad_rates_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 5/s"):
        parse_rate(text)


def test_a_burst_goes_at_once_then_the_rate_paces() -> None:
    now = [0.0]
    sent: list[float] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(7):
        bucket.take()
        sent.append(now[0])
    assert sent == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


def test_no_rate_never_waits() -> None:
    bucket = TokenBucket(rate_per_s=None, sleep=lambda s: pytest.fail("must not sleep"))
    for _ in range(100):
        bucket.take()
