"""Where artifacts live. Every backend honours the contract in ``storage.base``."""

from .base import Storage, Writer
from .local import LocalStorage

__all__ = ["LocalStorage", "Storage", "Writer"]
