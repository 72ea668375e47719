"""How volumes are backed up and restored, alone, in a set or in a whole-system restore: one
frozen object, built once from the settings (``Settings.volume_options``)."""

from __future__ import annotations

from dataclasses import dataclass

from ...naming import VolumeAccess, VolumeCompression


@dataclass(frozen=True)
class VolumeOptions:
    compression: VolumeCompression = "gzip"  # follows the dump's: naming.volume_compression
    access: VolumeAccess = "auto"  # the host folder, a helper container, or either
    stop_timeout: int | None = None  # [docker] stop_timeout; None: its default
