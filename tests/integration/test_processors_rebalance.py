"""A rebalance while the processor is still working through a backlog, before its first offset commit, loses
nothing: Faust clears the agents' buffers on a rebalance and reads them again from the committed offsets, and a
partition with nothing committed yet must be read again from its beginning (``stream_processors.rewind``), not
from where the fetcher had got to.

The rebalance is the one a stalled process causes (a VM pause, a swap storm): the processor is frozen with
SIGSTOP for longer than its session timeout, so the broker drops it from the group; when it runs again it
rejoins, and Faust clears its buffers and seeks.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cxr_triage import topics
from tests.integration.processors_support import processor_stack, wait_for
from tests.processors_factories import prediction, study, verdict

pytestmark = pytest.mark.integration

STUDIES = 600
SESSION_TIMEOUT_S = 10  # stream_processors.app: broker_session_timeout


def test_a_rebalance_before_the_first_commit_loses_no_buffered_event(tmp_path: Path) -> None:
    with processor_stack(tmp_path) as (_broker, processor, events):
        for i in range(STUDIES):  # a backlog: the agents' buffers fill as soon as the processor starts
            study_id = f"r-{i:04d}"
            events.send(topics.STUDIES, study(study_id))
            events.send(topics.PREDICTIONS, prediction(study_id, priority=0.8 if i % 3 else 0.3))
            events.send(topics.VERDICTS, verdict(study_id, abnormal=i % 3 != 0))
        events.flush()
        processor.start()
        wait_for(lambda: processor.store.count() > 0, timeout_s=90, what="the first example", every_s=0.05)
        assert processor.process is not None
        group = os.getpgid(processor.process.pid)
        os.killpg(group, signal.SIGSTOP)
        try:
            stored_when_frozen = processor.store.count()
            time.sleep(SESSION_TIMEOUT_S + 5)
        finally:
            os.killpg(group, signal.SIGCONT)
        assert stored_when_frozen < STUDIES, "the backlog was done before the rebalance"

        wait_for(lambda: processor.store.count() == STUDIES, timeout_s=180, what=f"{STUDIES} examples")
        stats = processor.stats()
        assert (stats["total"], stats["unmatched_waiting"], stats["dead_lettered"]) == (STUDIES, 0, 0)
