"""Where artifacts live. Every backend honours the contract in ``storage.base``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .base import Storage, Writer
from .local import LocalStorage

if TYPE_CHECKING:
    from .s3 import S3Storage


def __getattr__(name: str) -> Any:
    # boto3 takes ~0.3 s to import: only users of the S3 backend pay for it.
    if name == "S3Storage":
        from .s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def s3_class() -> type[S3Storage] | None:
    """``S3Storage`` when its module is loaded, else None (then no storage is one): a type
    check that never imports boto3 (20 MB and 0.1 s for a restore from local disk)."""
    module = sys.modules.get(f"{__name__}.s3")
    return None if module is None else module.S3Storage


__all__ = ["LocalStorage", "S3Storage", "Storage", "Writer", "s3_class"]
