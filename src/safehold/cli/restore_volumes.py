"""``restore --volume NAME:REF``: the plan of each volume restore (for ``--dry-run``) and the
restores themselves, as the restore command shows them."""

from __future__ import annotations

import click

from .. import catalog
from ..operations.volumes.docker import restore_volume
from ..sources.docker.engine import connect_docker, users_of
from ..storage import LocalStorage
from .runtime import Runtime


def plan_volumes(
    rt: Runtime, storage: LocalStorage, volumes: list[tuple[str, str]], *, safety: bool, stop: bool
) -> list[dict[str, object]]:
    """What a volume restore would do, checked as far as possible without changing anything."""
    if not volumes:
        return []
    client = connect_docker()
    plans: list[dict[str, object]] = []
    for name, ref in volumes:
        source = catalog.resolve(storage, ref, "volume", name)
        exists = any(str(v.name) == name for v in client.volumes.list())
        users = sorted(str(c.name) for c in users_of(client, name)) if exists else []
        steps = [
            f"verify {source.name} (sha256 against its manifest)"
            if source.manifest
            else f"{source.name} has no manifest: extract it as a tar archive (warning)"
        ]
        if users and not stop:
            steps.append(
                f"REFUSED: running containers use it: {', '.join(users)} (add --stop-containers)"
            )
        elif users:
            steps.append(f"stop {', '.join(users)}")
        if not exists:
            steps.append(f"create Docker volume {name}")
        elif safety:
            steps.append(f"safety backup of the current content of {name}")
        steps.append(f"replace the content of {name} with exactly the archive's")
        if users and stop:
            steps.append(f"start {', '.join(reversed(users))} again")
        plans.append({"volume": name, "source": source.name, "steps": steps})
        if not rt.as_json:
            click.echo(f"plan (dry run, nothing changed): restore volume {name} from {source.name}")
            for number, step in enumerate(steps, 1):
                click.echo(f"  {number}. {step}")
    return plans


def restore_volumes(
    rt: Runtime,
    storage: LocalStorage,
    volumes: list[tuple[str, str]],
    *,
    safety: bool,
    stop: bool,
    keep_setuid: bool = False,
) -> list[dict[str, object]]:
    if not volumes:
        return []
    client = connect_docker()
    vols = rt.settings.volume_options()
    done: list[dict[str, object]] = []
    for name, ref in volumes:
        result = restore_volume(
            client,
            name,
            storage,
            ref,
            safety_backup=safety,
            stop_containers=stop,
            compression=vols.compression,
            lock_timeout=rt.settings.lock_timeout,
            sink=rt.sink,
            access=vols.access,
            encryption=rt.settings.encryption_key() if safety else None,
            key=rt.settings.decryption_key(),
            keep_setuid=keep_setuid,
            stop_timeout=vols.stop_timeout,
        )
        kept = result.safety_backup.artifact if result.safety_backup else None
        done.append(
            {
                "volume": name,
                "source": result.source,
                "safety_backup": kept,
                **result.facts.to_json(),
            }
        )
        if not rt.as_json:
            click.echo(
                f"restored volume {name} from {result.source}: {result.facts.files} "
                f"files, {result.facts.bytes} bytes"
            )
            if kept:
                click.echo(f"its previous content is kept as the backup {kept}")
    return done
