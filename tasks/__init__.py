"""Thin Prefect tasks: each is one call into the core library, plus retries, caching, names."""
