"""Test images made here from Debian's static busybox: nothing is ever pulled from a registry.

The rootfs and the import live in :mod:`safehold.sources.docker.helper_image`, which the volume
helper containers use too; the sandbox only keeps its own tag, the one tests and the demo run.
"""

from __future__ import annotations

from pathlib import Path

import docker
from docker.models.images import Image

from ..sources.docker.helper_image import (
    ACCOUNTS,
    BUSYBOX,
    FOLDERS,
    GROUP,
    INSTALL_HINT,
    PATH,
    ROOTFS_LABEL,
    applets,
    busybox_rootfs,
    is_static_elf,
)
from ..sources.docker.helper_image import ensure_busybox_image as _ensure_busybox_image

DEFAULT_TAG = "safehold-busybox:latest"

__all__ = [
    "ACCOUNTS",
    "BUSYBOX",
    "DEFAULT_TAG",
    "FOLDERS",
    "GROUP",
    "INSTALL_HINT",
    "PATH",
    "ROOTFS_LABEL",
    "applets",
    "busybox_rootfs",
    "ensure_busybox_image",
    "is_static_elf",
]


def ensure_busybox_image(
    client: docker.DockerClient, tag: str = DEFAULT_TAG, *, busybox: Path = BUSYBOX
) -> Image:
    """Return the image ``tag``, importing it from a fresh busybox rootfs only if needed."""
    return _ensure_busybox_image(client, tag, busybox=busybox)
