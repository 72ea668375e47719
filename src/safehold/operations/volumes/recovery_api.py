"""Finishing a volume swap through the Docker engine's API that a kill interrupted, from its
``api_volume_swap`` journal entry (:mod:`.helper_swap` writes it, and describes the order).

The volume's own folders say how far it got: with the commit mark, every old entry was aside
(synced before the mark was made), so the staged entries still waiting move in and the restore
is finished; with only the aside folder, the old entries move back and it is rolled back; with
only the staging folder, the swap had not begun and that folder goes. The helper a dead run
left is waited for first (it may still be swapping) and removed. The work runs in a new busybox
helper, so this needs only the engine, not the volume's folder on this host.

It holds the volume's lock (exclusive) while it works, as :mod:`.recovery_volume` does, so a
run starting meanwhile cannot swap the same volume.
"""

from __future__ import annotations

import docker
import docker.errors

from ...errors import SafeholdError
from ...model import Event
from ...sources.docker.helper_image import DOCKER_ERRORS
from .. import journal
from .api_swap import KIND, NEVER_STARTED, clear_helpers, recover_volume
from .recovery import locked


@journal.resolver(KIND)
def settle_api_swap(entry: journal.Entry, context: journal.Context) -> str:
    volume, token = str(entry.data["volume"]), str(entry.data["token"])
    meta = [str(value) for value in entry.data.get("root") or ["", "", "", ""]]
    about = f"the interrupted restore of {entry.data.get('source') or 'an archive'}"
    said: list[Event] = []  # a helper it could not remove: told in its one line
    with locked(entry, context):
        if not context.storage.exists(entry.key):
            return f"{_what(entry)}: already settled by another run"
        client: docker.DockerClient = context.get("docker")
        try:
            ended = clear_helpers(client, token)
            try:
                client.volumes.get(volume)
            except docker.errors.NotFound:
                return f"{_what(entry)}: the volume no longer exists; nothing of {about} to settle"
            before = str(entry.data.get("before") or "")
            outcome, moved, meta_failed = recover_volume(
                client, volume, token, meta, before, said.append
            )
        except DOCKER_ERRORS as exc:
            raise SafeholdError(f"cannot settle {about} in volume {volume}: {exc}") from exc
    if outcome == 13:
        done = f"was finished ({moved} entries still to move were moved in)"
    elif outcome == 12:
        done = f"was rolled back ({moved} entries moved back)"
    elif outcome == 11:
        done = "had not begun its swap: removed the staging folder (the volume is as it was)"
    elif ended == NEVER_STARTED:
        done = "had not begun its swap: nothing was changed in the volume"
    elif ended in (0, 2):
        done = "was finished by its helper container"
        meta_failed = ended == 2
    elif ended in (1, 3):
        done = "was undone by its helper container (the volume is as it was)"
    else:
        done = "was already settled (nothing of it was left in the volume)"
    if meta_failed:
        done += ", but the volume root's owner, mode or mtime could not be set"
    return "; ".join([f"{_what(entry)}: {about} {done}", *(e.message for e in said)])


def _what(entry: journal.Entry) -> str:
    return str(entry.data.get("what") or f"volume {entry.data.get('volume')}")
