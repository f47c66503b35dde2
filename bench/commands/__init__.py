"""The click commands of ``cxr-triage bench``, by what they run against: ``model`` (a model file, no stack:
raw, int8, torch), ``stack`` (a running stack: triton, pipeline, all), ``api`` (the worklist API); ``options``
holds what they share. ``bench.cli`` attaches them to the group; the measuring lives in ``bench.suite``."""
