"""Examples of all sources, filtered and checked before training: a bad row fails here, not mid-epoch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from cxr_triage.imaging import ImageRejected, decode_grayscale
from trainer.data.policies import UncertaintyPolicy, apply_policy
from trainer.data.sources import Example, ExampleSource
from trainer.errors import BadRow, BadRowsError, DataError

logger = logging.getLogger(__name__)


class Verify(StrEnum):
    DECODE = "decode"  # decode every image with the training decoder: nothing can fail later
    EXISTS = "exists"  # only check that each file exists (very large sets, trusted files)
    NONE = "none"


@dataclass(frozen=True)
class Manifest:
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)

    def raw_labels(self) -> np.ndarray:
        return np.array([e.labels for e in self.examples], dtype=np.float32).reshape(len(self), -1)

    def targets(self, policy: UncertaintyPolicy) -> tuple[np.ndarray, np.ndarray]:
        return apply_policy(self.raw_labels(), policy)

    def abnormal(self) -> np.ndarray:
        return np.array([e.abnormal for e in self.examples], dtype=np.float32)

    def subset(self, indices: Sequence[int]) -> Manifest:
        return Manifest(tuple(self.examples[i] for i in indices))

    def sources(self) -> list[str]:
        return [e.source for e in self.examples]


def _problem(example: Example, verify: Verify) -> BadRow | None:
    if not example.path.is_file():
        return BadRow(example.where, example.rel_path, "image file not found")
    if verify is Verify.DECODE:
        try:
            decode_grayscale(example.path.read_bytes())
        except ImageRejected as exc:
            return BadRow(example.where, example.rel_path, f"unreadable image: {exc.reason}")
        except OSError as exc:
            return BadRow(example.where, example.rel_path, f"image cannot be read (errno {exc.errno})")
    return None


def check_examples(examples: Sequence[Example], *, verify: Verify, threads: int = 2) -> None:
    """``BadRowsError`` listing every example whose image is missing or (with DECODE) cannot be decoded."""
    if verify is Verify.NONE:
        return
    # PIL releases the GIL while decoding, so threads overlap file reads and decodes.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = [p for p in pool.map(lambda e: _problem(e, verify), examples) if p is not None]
    if problems:
        raise BadRowsError(problems)


def build_manifest(
    sources: Sequence[ExampleSource],
    *,
    frontal_only: bool = True,
    verify: Verify = Verify.DECODE,
    threads: int = 2,
) -> Manifest:
    """All examples of ``sources`` (frontal views only by default), validated; ``DataError`` when none."""
    examples: list[Example] = []
    for source in sources:
        rows = source.examples()
        logger.info("source read", extra={"source": source.name, "rows": len(rows)})
        examples += rows
    if frontal_only:
        examples = [e for e in examples if e.frontal]
    if not examples:
        raise DataError("no usable examples in the given data (after the frontal-only filter)")
    check_examples(examples, verify=verify, threads=threads)
    return Manifest(tuple(examples))
