"""Test stacks' ports: outside the kernel's ephemeral range, one block per xdist worker, never a busy one."""

from __future__ import annotations

import socket

import pytest

from deploy import testing


@pytest.fixture()
def fresh_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing, "_cursor", testing._PortCursor())


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range(fresh_cursor: None) -> None:
    ports = testing.free_ports(40)
    assert len(set(ports)) == 40
    low = testing._ephemeral_low()
    assert all(testing._PORT_FLOOR <= port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    # The next call walks on: a stack started straight after another never gets its ports.
    assert not set(testing.free_ports(40)) & set(ports)


def test_xdist_workers_get_disjoint_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    blocks = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        blocks.append(set(testing._worker_block()))
    assert not blocks[0] & blocks[1] and not blocks[1] & blocks[2] and not blocks[0] & blocks[2]
    assert all(len(block) > 1000 for block in blocks)


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch, fresh_cursor: None) -> None:
    (taken,) = testing.free_ports(1)
    monkeypatch.setattr(testing, "_cursor", testing._PortCursor())
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        # Start the walk on the busy port itself.
        monkeypatch.setattr(testing.random, "randrange", lambda n: testing._worker_block().index(taken))
        ports = testing.free_ports(3)
    block = testing._worker_block()
    assert taken not in ports
    assert ports[0] == block[(block.index(taken) + 1) % len(block)]
