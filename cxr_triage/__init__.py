"""cxr-triage shared package: event schemas, topic names, label list, settings, image decoding."""

__version__ = "0.1.0"
