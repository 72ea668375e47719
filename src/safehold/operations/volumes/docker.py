"""Docker volumes: backup and restore through the host's folder when it is readable here (the
faster path, measured in bench/bench_volume_paths.py), otherwise through the Docker Engine API
with a helper container (any engine DOCKER_HOST names, also a remote one). ``access`` forces
one: ``direct`` or ``api``; ``auto`` picks.

A restore holds the volume's lock (``lock.volume_lock``) exclusive from before its safety
backup to after the swap, a backup holds it shared: a second restore of the volume, or a
backup of it, waits (up to the lock timeout) instead of interleaving. On both paths the swap
is journalled in the repository, so a killed restore is undone or finished by the next command
(``recovery_volume.py``, ``recovery_volume_api.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors
import requests

from ... import catalog
from ...crypto import DecryptionKey, EncryptionKey
from ...errors import HookFailed, UsageError
from ...lock import volume_key, volume_lock
from ...model import Event, EventSink, Manifest, null_sink
from ...naming import VolumeAccess
from ...sources.docker.engine import (
    check_target_name,
    refuse_if_in_use,
    unavailable,
    users_of,
    volume_mountpoint,
)
from ...storage import LocalStorage
from .api import read_volume_tar, replace_volume_content
from .downtime import quiesced, stopped
from .extract import SwapJournal, extract_tree
from .folder import TreeSource, Unpack, VolumeRestore, backup_source, folder_source, restore_into

Access = VolumeAccess
ACCESS_MODES: tuple[str, ...] = ("auto", "direct", "api")


def volume_source(client: docker.DockerClient, name: str, access: Access = "auto") -> TreeSource:
    root = volume_folder(client, name, access)
    if root is not None:
        return folder_source(root)
    return TreeSource(
        f"Docker volume {name} (engine API)",
        lambda out, events: read_volume_tar(client, name, out, events=events),
    )


def volume_unpack(
    client: docker.DockerClient,
    name: str,
    access: Access,
    sink: EventSink,
    keep_setuid: bool,
    journal_to: SwapJournal | None = None,
) -> tuple[Unpack, str]:
    """``journal_to``: journal the swap in a repository, on either path."""
    root = volume_folder(client, name, access)
    if root is not None:
        return (
            lambda stream, check, expected: extract_tree(
                stream,
                root,
                events=sink,
                before_swap=check,
                keep_setuid=keep_setuid,
                journal_to=journal_to,
                expected_bytes=expected,
            ),
            str(root),
        )
    return (
        # The engine unpacks into its own disk: the spool's checks stand for free space there.
        lambda stream, check, _expected: replace_volume_content(
            client,
            name,
            stream,
            events=sink,
            before_swap=check,
            keep_setuid=keep_setuid,
            journal_to=journal_to,
        ),
        f"Docker volume {name} (engine API)",
    )


def volume_folder(client: docker.DockerClient, name: str, access: Access) -> Path | None:
    """The volume's folder when it is used directly; None for the engine API."""
    if access not in ACCESS_MODES:
        raise UsageError(f"unknown volume access {access!r}", hint="use auto, direct or api")
    if access == "api":
        check_target_name(name)
        return None
    mountpoint = volume_mountpoint(client, name)
    if mountpoint.is_dir() and os.access(mountpoint, os.R_OK | os.W_OK | os.X_OK):
        return mountpoint
    if access == "direct":
        raise UsageError(
            f"the folder of Docker volume {name} ({mountpoint}) is not readable here",
            hint="run safehold on the Docker host as root, or use backup.volume_access = "
            "'auto' or 'api' (a helper container through the engine API)",
        )
    return None


def backup_volume(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    *,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
    access: Access = "auto",
    encryption: EncryptionKey | None = None,
    stop_timeout: int | None = None,
) -> Manifest:
    """Back up a volume. Running containers that use it run their safehold.pre-backup command
    first (a failure stops the backup); those labelled safehold.stop-during-backup=true are
    stopped for the copy and started again afterwards, also when the copy fails; then the
    safehold.post-backup commands run."""
    source = volume_source(client, name, access)
    manifest: Manifest | None = None
    storage.ensure()
    try:
        with (
            volume_lock(
                storage.root,
                volume_key(name),
                exclusive=False,
                timeout=lock_timeout,
                purpose=f"safehold backup of volume {name}",
            ),
            quiesced(
                client,
                [name],
                sink,
                f"backup of volume {name}",
                storage,
                stop_timeout=stop_timeout,
            ),
        ):
            manifest = backup_source(
                source,
                name,
                storage,
                compression=compression,
                lock_timeout=lock_timeout,
                sink=sink,
                encryption=encryption,
            )
    except HookFailed as exc:
        if manifest is not None:
            exc.message += f" (the backup {manifest.artifact} itself was written and is good)"
        raise
    return manifest


def restore_volume(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    ref: str = "latest",
    *,
    safety_backup: bool = True,
    stop_containers: bool = False,
    compression: str = "gzip",
    lock_timeout: float = 300.0,
    sink: EventSink = null_sink,
    access: Access = "auto",
    encryption: EncryptionKey | None = None,
    key: DecryptionKey | None = None,
    keep_setuid: bool = False,
    stop_timeout: int | None = None,
) -> VolumeRestore:
    """Replace a volume's content; refused while a running container uses it, unless
    ``stop_containers``: then they are stopped, and started again afterwards.
    ``encryption``: for the safety backup; ``key``: opens an encrypted backup;
    ``keep_setuid``: keep set-id bits from an archive without a safehold manifest too.
    The volume's lock is held throughout; the swap is journalled in ``storage``."""
    check_target_name(name)
    # Resolve before the safety backup, or "latest" would name the safety backup itself.
    source = catalog.resolve(storage, ref, "volume", name)
    storage.ensure()
    with volume_lock(
        storage.root,
        volume_key(name),
        exclusive=True,
        timeout=lock_timeout,
        purpose=f"safehold restore of volume {name} from {source.name}",
    ):
        users = users_of(client, name) if stop_containers else []
        why = f"restore of volume {name}"
        with stopped(users, sink, why, storage, stop_timeout=stop_timeout):
            return _replace(
                client,
                name,
                storage,
                source,
                safety_backup,
                compression,
                lock_timeout,
                sink,
                access,
                (encryption, key),
                keep_setuid or source.manifest is not None,
            )


def _replace(
    client: docker.DockerClient,
    name: str,
    storage: LocalStorage,
    source: catalog.Resolved,
    safety_backup: bool,
    compression: str,
    lock_timeout: float,
    sink: EventSink,
    access: Access,
    keys: tuple[EncryptionKey | None, DecryptionKey | None],
    keep_setuid: bool,
) -> VolumeRestore:
    refuse_if_in_use(client, name)
    created = False
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        client.volumes.create(name=name)
        created = True
        sink(Event("restore", f"created Docker volume {name}"))
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise unavailable(exc) from exc
    safety: Manifest | None = None
    if safety_backup and not created:
        sink(Event("restore", f"safety backup of the current content of volume {name}"))
        safety = backup_source(
            volume_source(client, name, access),
            name,
            storage,
            compression=compression,
            lock_timeout=lock_timeout,
            sink=sink,
            encryption=keys[0],
            safety=True,
        )
        sink(
            Event(
                "restore",
                f"the current content of {name} is kept as {safety.artifact}, a safety copy: "
                "never the volume's latest backup, removed by prune after retention.safety_days "
                "unless pinned",
                data={"safety_backup": safety.artifact},
            )
        )
    # A container started meanwhile would see the swap happen under it; check again.
    refuse_if_in_use(client, name)
    journal_to = SwapJournal(storage, f"volume {name}", source.name, volume_key(name))
    unpack, where = volume_unpack(client, name, access, sink, keep_setuid, journal_to)
    facts = restore_into(
        storage, str(source.path), unpack, where, name, sink, lock_timeout, keys[1]
    )
    return VolumeRestore(facts, source.name, safety)
