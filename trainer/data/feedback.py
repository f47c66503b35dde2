"""The radiologists' verdicts as a data source: ``FeedbackStore`` rows -> ``Example`` rows.

Each stored ``FeedbackEventV1`` is one example: the image behind its ``image_uri`` (the local image store),
the radiologist's 14 findings as 1 / 0, and -1 for a finding marked uncertain (so the run's uncertainty
policy decides about it, as for CheXpert's -1). The study id is the grouping id: it is pseudonymous, and all
readings of a study stay on one side of every split.

A fixed share of studies (``retrain_heldout_fraction``, by a hash of the study id) is the **held-out slice**:
never trained on and never used to choose a threshold, only to gate a challenger against the champion. It is
marked with the ``test`` split, which training (train / val) never selects; since it depends on the study id
alone, a study stays held out in every later retraining and after an amendment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from cxr_triage.events import FeedbackEventV1
from cxr_triage.feedback.store import FeedbackStore, StoredExample
from cxr_triage.labels import LABELS
from trainer.data.manifest import Manifest
from trainer.data.policies import UNCERTAIN
from trainer.data.sources import Example
from trainer.data.splits import Split
from trainer.errors import DataError

SOURCE_NAME: Final = "feedback"
HELD_OUT: Final = Split.TEST.value


def is_held_out(study_id: str, *, fraction: float, seed: int) -> bool:
    """Whether ``study_id`` belongs to the held-out slice (a salt distinct from the val split's hash)."""
    digest = hashlib.sha256(f"feedback-heldout:{seed}:{study_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def raw_labels(event: FeedbackEventV1) -> tuple[float, ...]:
    """1.0 / 0.0 per finding in ``LABELS`` order; -1.0 where the radiologist marked it uncertain."""
    uncertain = set(event.uncertain)
    return tuple(UNCERTAIN if label in uncertain else float(event.labels[label]) for label in LABELS)


def image_path(uri: str, image_root: Path) -> Path:
    """The local file behind a ``file://`` image URI, which must lie inside the image store."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise DataError("feedback image URI is not a file:// URI of this host's image store")
    path = Path(url2pathname(unquote(parsed.path))).resolve()
    if not path.is_relative_to(image_root.expanduser().resolve()):
        raise DataError("feedback image URI points outside the image store")
    return path


def to_example(
    stored: StoredExample, *, image_root: Path, held_out: bool, training_split: str | None
) -> Example:
    event = stored.event
    path = image_path(event.image_uri, image_root)
    return Example(
        path=path,
        # Where a bad row is reported: the store's sequence number and the content hash, never the study id.
        rel_path=path.name,
        labels=raw_labels(event),
        patient_id=event.study_id,
        source=SOURCE_NAME,
        where=f"feedback seq {stored.seq}",
        frontal=True,  # feedback events carry no view; the worker scored it as a frontal film
        abnormal=float(event.abnormal),
        split=HELD_OUT if held_out else training_split,
    )


@dataclass(frozen=True)
class FeedbackSource:
    """Examples of the store with ``after_seq < seq <= up_to_seq``; held-out ones carry the ``test`` split.

    ``training_split`` is the split of the others: ``"train"`` when a public set's validation split chooses
    the threshold (all feedback is then trained on), ``None`` to split them by study like any source.
    """

    store: FeedbackStore
    image_root: Path
    heldout_fraction: float
    seed: int
    after_seq: int = 0
    up_to_seq: int | None = None
    training_split: str | None = None

    @property
    def name(self) -> str:
        return SOURCE_NAME

    def examples(self) -> list[Example]:
        rows = self.store.examples(after_seq=self.after_seq, up_to_seq=self.up_to_seq)
        return [
            to_example(
                row,
                image_root=self.image_root,
                held_out=is_held_out(row.event.study_id, fraction=self.heldout_fraction, seed=self.seed),
                training_split=self.training_split,
            )
            for row in rows
        ]


def held_out_manifest(examples: list[Example]) -> Manifest:
    """The held-out slice of ``examples`` (may be empty: the caller decides whether it can gate)."""
    return Manifest(tuple(e for e in examples if e.split == HELD_OUT))
