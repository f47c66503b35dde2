"""From Kafka records to model input: parse the event, fetch and check the image, decode and resize it.

The tensor is the greyscale pixels at the served model's input size (uint8 [1, S, S]); the model's graph does
the rest of the preprocessing.

A study event names all its images; each image the served model reads (its ``cxr.views``, frontal by
default) becomes one ``Prepared`` tensor, so a study with a PA and a repeat PA is two rows of the batch. A study
with no image of a view the model reads is scored on its top-level image all the same: it must get a priority
to be read at all, never be dropped. Each image ends as either ``Prepared`` (a tensor ready for Triton) or
``Rejected`` (a reason for the dead letter topic); a bad record or image never stops the others of its batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from cxr_triage.events import STUDY_ID_PATTERN, StudyEventV1, StudyImageV1
from cxr_triage.image_store import ImageNotFound, ImageStore, ImageURIRefused
from cxr_triage.imaging import ImageRejected, decode_grayscale, resize_gray, sniff_content_type
from cxr_triage.model.contract import FRONTAL_VIEWS
from inference_worker.records import Record

_STUDY_ID = re.compile(STUDY_ID_PATTERN)

# Reason classes: a small fixed set, used as a metric label and in the dead letter's error_type.
INVALID_EVENT = "invalid_event"
IMAGE_UNAVAILABLE = "image_unavailable"
CHECKSUM_MISMATCH = "checksum_mismatch"
IMAGE_REJECTED = "image_rejected"
INVALID_OUTPUT = "invalid_output"


@dataclass(frozen=True)
class Prepared:
    record: Record
    study: StudyEventV1
    tensor: np.ndarray  # uint8 [1, S, S]
    # The decoded greyscale image, kept only while a challenger scores too: a challenger of another input size
    # gets its tensor resized from it, exactly as offline, never from the champion's already resized one.
    source: np.ndarray | None = None
    image: StudyImageV1 | None = None  # which of the study's images (None: its top-level one)

    @property
    def which(self) -> StudyImageV1:
        return self.image if self.image is not None else self.study.primary_image

    def tensor_at(self, size: int) -> np.ndarray:
        """The model input at ``size`` px (the champion's tensor when the sizes agree)."""
        if self.tensor.shape[-1] == size:
            return self.tensor
        if self.source is None:
            raise ValueError("the decoded image was not kept (prepare with keep_source=True)")
        return resize_gray(self.source, size)


@dataclass(frozen=True)
class Rejected:
    record: Record
    reason_class: str
    reason: str
    error_type: str
    study_id: str | None = None
    sha256: str | None = None


@dataclass
class PreparedBatch:
    prepared: list[Prepared] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def prepare_batch(
    records: list[Record],
    *,
    store: ImageStore,
    input_size: int,
    keep_source: bool = False,
    reads: Callable[[str], bool] = FRONTAL_VIEWS.__contains__,
) -> PreparedBatch:
    """Every image of every study that the model reads (``reads(view)``), ready for Triton."""
    batch = PreparedBatch()
    for record in records:
        for outcome in prepare_study(
            record, store=store, input_size=input_size, keep_source=keep_source, reads=reads
        ):
            if isinstance(outcome, Prepared):
                batch.prepared.append(outcome)
            else:
                batch.rejected.append(outcome)
    return batch


def prepare_study(
    record: Record,
    *,
    store: ImageStore,
    input_size: int,
    keep_source: bool = False,
    reads: Callable[[str], bool] = FRONTAL_VIEWS.__contains__,
) -> list[Prepared | Rejected]:
    """One outcome per image of the study that the model reads (the top-level image if it reads none)."""
    study = parse_study(record)
    if isinstance(study, Rejected):
        return [study]
    images = study.all_images
    chosen = [image for image in images if reads(image.view)] or [study.primary_image]
    return [
        prepare_image(record, study, image, store=store, input_size=input_size, keep_source=keep_source)
        for image in chosen
    ]


def prepare_one(
    record: Record, *, store: ImageStore, input_size: int, keep_source: bool = False
) -> Prepared | Rejected:
    """The study's top-level image (its first frontal one), ready for Triton."""
    study = parse_study(record)
    if isinstance(study, Rejected):
        return study
    return prepare_image(
        record, study, study.primary_image, store=store, input_size=input_size, keep_source=keep_source
    )


def parse_study(record: Record) -> StudyEventV1 | Rejected:
    if not record.value:
        return _reject(record, INVALID_EVENT, "empty message value", "EmptyMessage")
    try:
        return StudyEventV1.from_bytes(record.value)
    except ValidationError as exc:
        return _reject(record, INVALID_EVENT, f"invalid study event: {summarise(exc)}", type(exc).__name__)


def prepare_image(
    record: Record,
    study: StudyEventV1,
    image: StudyImageV1,
    *,
    store: ImageStore,
    input_size: int,
    keep_source: bool = False,
) -> Prepared | Rejected:
    """One image of ``study`` fetched, checked against its hash, and decoded."""
    uri, sha256, size, content_type = image.image_uri, image.sha256, image.size_bytes, image.content_type

    def reject(reason_class: str, reason: str, error_type: str) -> Rejected:
        return Rejected(record, reason_class, reason, error_type, study_id=study.study_id, sha256=sha256)

    try:
        data = store.get(uri)
    except (ImageNotFound, ImageURIRefused) as exc:
        return reject(IMAGE_UNAVAILABLE, str(exc), type(exc).__name__)
    except OSError as exc:  # permissions, I/O errors: the message text would echo the path, so it is left out
        return reject(IMAGE_UNAVAILABLE, f"image could not be read (errno {exc.errno})", type(exc).__name__)

    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256 or len(data) != size:
        return reject(
            CHECKSUM_MISMATCH,
            f"stored image has sha256 {digest} and {len(data)} bytes; the event says {sha256} "
            f"and {size} bytes",
            "ChecksumMismatch",
        )
    try:
        sniffed = sniff_content_type(data)
        if sniffed != content_type:
            raise ImageRejected(f"the file is {sniffed} but the event says {content_type}")
        gray = decode_grayscale(data, sniffed)
        tensor = resize_gray(gray, input_size)
    except ImageRejected as exc:
        return reject(IMAGE_REJECTED, exc.reason, type(exc).__name__)
    return Prepared(record, study, tensor, gray if keep_source else None, image)


def _reject(record: Record, reason_class: str, reason: str, error_type: str) -> Rejected:
    return Rejected(record, reason_class, reason, error_type, study_id=_study_id_from_key(record.key))


def _study_id_from_key(key: bytes | None) -> str | None:
    # Producers key study events by study id; it names the study in the dead letter when the value is garbage.
    if not key:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return text if _STUDY_ID.match(text) else None


def summarise(exc: ValidationError) -> str:
    """The first few problems of a validation error on one line (field: message), without input values."""
    problems = [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]
    return "; ".join(problems[:5])
