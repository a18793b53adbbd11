"""Imported before transformers' Bark: its modeling module asks at import whether flash
attention is available with the hub's kernels as a fallback, and transformers then downloads
compiled kernels (kernels-community/flash-attn*) from the hub and loads them. This tool runs no
code from the hub, and a model on disk needs no network: the fallback is turned off."""

from __future__ import annotations

import transformers.utils.import_utils as _import_utils


def _no_kernel_fallback(fa_version: int) -> bool:
    return False


_import_utils.is_flash_attn_kernel_fallback_available = _no_kernel_fallback
