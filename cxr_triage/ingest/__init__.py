"""Ingest shared by every entry point (CLI, API upload, gateway): validate, store, publish, dead-letter."""
