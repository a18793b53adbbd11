"""Shared fixtures: everything a test needs is made on the spot (no network, no hub)."""
