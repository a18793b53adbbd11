"""Prefect flows: they compose tasks and read like a table of contents."""
