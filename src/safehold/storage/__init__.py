"""Where artifacts live. Every backend honours the contract in ``storage.base``."""

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


__all__ = ["LocalStorage", "S3Storage", "Storage", "Writer"]
