"""Swapping an archive into a Docker volume through the engine, journalled so that a kill at any
instant (of safehold, of the helper, of the engine, or a power loss) leaves the volume exactly
as it was or exactly restored once the next safehold command has run.

The order, each step durable before the next: the journal entry ``api_volume_swap`` (volume,
token, the archive root's owner/mode/mtime) is written; a busybox helper labelled
``SWAP_LABEL=token`` is created; the volume root's mtime is read (staging changes it; an undo
puts it back) and added to the entry; the engine unpacks the archive into
``.safehold-stage-TOKEN`` inside the volume (``put_archive``); the helper runs ``SWAP_SCRIPT``:

1. every entry of the volume is renamed into ``.safehold-old-TOKEN``;
2. ``sync -f``, the commit mark ``.safehold-forward-TOKEN`` is created, ``sync -f`` again;
3. the staged entries are renamed in, the root's owner and mode set, the two folders removed,
   ``sync -f``, the mark removed (last: a mark-less aside folder means "roll back"), and the
   root's mtime set.

The next command's resolver (:mod:`.recovery_volume_api`) lets a helper still running finish,
removes it, and runs ``RECOVER_SCRIPT`` in a new one: with the mark it finishes step 3, with
only the aside folder it moves the old entries back, with only the staging folder it removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import tarfile
import time
from collections.abc import Iterable
from datetime import datetime

import docker
import docker.errors
from docker.models.containers import Container
from docker.models.images import Image
from docker.utils import decode_json_header

from ...errors import RestoreError
from ...model import Event, EventSink, null_sink
from ...sources.docker.helper_image import (
    DOCKER_ERRORS,
    MOUNT,
    ensure_busybox_image,
    helper_container,
    run_helper,
)
from .. import journal
from .extract import SwapJournal

KIND = "api_volume_swap"  # its journal entries
SWAP_LABEL = "org.safehold.swap"  # on the helpers of one swap, so recovery finds them
STAGE = ".safehold-stage-"  # + token: the staging folder inside the volume
OLD = ".safehold-old-"  # + token: where the volume's entries wait during the swap
GO_MARKER = "safehold-go"  # in the helper's rootfs: the staged content is complete
BEFORE = "safehold-before"  # in the helper's rootfs: the volume root's mtime before staging
HELPER_WAIT_S = 60.0  # how long recovery lets a dead run's helper finish its swap
NEVER_STARTED = -1  # what clear_helpers says of a swap helper that was only created

# $1 token; $2..$5 the archive root's uid, gid, octal mode, mtime (all empty: it has none);
# $6 the volume root's mtime before anything was staged (whole seconds: busybox's touch sets
# no fraction), which an undo puts back.
# The existence check keeps a rename from landing inside a same-named folder: recovery must
# never nest an entry where it meant to put it back.
_PRELUDE = r"""
cd /v || exit 1
S=".safehold-stage-$1" O=".safehold-old-$1" M=".safehold-forward-$1"
U=$2 G=$3 P=$4 T=$5 B=$6 c=0
move() {
  for e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    n=${e##*/}
    case $n in "$S"|"$O"|"$M") continue;; esac
    if [ -e "$2/$n" ] || [ -L "$2/$n" ]; then echo "$2/$n exists" >&2; return 1; fi
    mv -- "$e" "$2/$n" || return 1
    c=$((c+1))
  done
}
flush() { sync -f .; }
owner() { [ -z "$U" ] || { chown "$U:$G" . && chmod "$P" .; }; }
stamp() { [ -z "$T" ] || touch -d "@$T" .; }
back() { [ -z "$B" ] || touch -d "@$B" .; }
clean() { rm -rf -- "$O" "$S" && flush && rm -f -- "$M"; }
"""

# Exit 0: swapped; 1: failed and undone; 2: swapped, but not the root's owner/mode/mtime;
# 3: no go marker, so only the staging folder went; 4: swapped, scratch folders left; 5:
# stopped half-way (the journal finishes or undoes it). After the mark, an undo first moves the
# new entries back into S, durably, and only then drops the mark: at every instant the state
# is one recovery reads right.
SWAP_SCRIPT = (
    _PRELUDE
    + r"""
B=$(cat /safehold-before 2>/dev/null)
if [ ! -e /safehold-go ]; then rm -rf -- "$S" && back; exit 3; fi
mkdir -m 700 -- "$O" || exit 1
if ! move . "$O" || ! flush || ! : > "$M" || ! flush; then
  rm -f -- "$M" && flush && move "$O" . && rm -rf -- "$O" "$S" && back && exit 1
  exit 5
fi
if ! move "$S" .; then
  move . "$S" && flush && rm -f -- "$M" && flush && move "$O" . && rm -rf -- "$O" "$S" && back \
    && exit 1
  exit 5
fi
owner || s=2
clean || exit 4
stamp || s=2
exit ${s:-0}
"""
)

# Prints "MOVED META_FAILED"; exit 10: nothing left; 11: staging folder removed; 12: rolled
# back; 13: finished; anything else: failed, try again.
RECOVER_SCRIPT = (
    _PRELUDE
    + r"""
if [ -e "$M" ]; then
  if [ -d "$S" ]; then move "$S" . || exit 1; fi
  owner || m=1
  clean || exit 1
  stamp || m=1
  echo "$c ${m:-0}"; exit 13
fi
if [ -d "$O" ]; then
  move "$O" . && flush && rm -rf -- "$O" "$S" || exit 1
  back || m=1
  echo "$c ${m:-0}"; exit 12
fi
if [ -e "$S" ] || [ -L "$S" ]; then rm -rf -- "$S" || exit 1; back; exit 11; fi
exit 10
"""
)


def root_meta(root: tarfile.TarInfo | None) -> list[str]:
    """What the scripts set on /v: the archive's ``./`` owner, octal mode, mtime (or nothing)."""
    if root is None:
        return ["", "", "", ""]
    mode = format(root.mode & 0o7777, "o")
    return [str(root.uid), str(root.gid), mode, str(math.floor(root.mtime))]


def unpack_and_swap(
    client: docker.DockerClient,
    image: Image,
    archive: Iterable[bytes],
    volume: str,
    token: str,
    meta: list[str],
    events: EventSink = null_sink,
    journal_to: SwapJournal | None = None,
) -> None:
    """Unpack ``archive`` (names under ``v/STAGE+token/``) into a busybox helper made from
    ``image``, then run the swap in it (or, when the upload failed, only the staging folder's
    removal). With ``journal_to``, journalled: whatever it leaves unsettled (a kill, an engine
    gone, a helper stopped) is undone or finished by the next command."""
    entry = None
    if journal_to is not None:
        data = journal_to.data(volume=volume, token=token, root=meta)
        entry = journal.record(journal_to.storage, KIND, data, journal_to.purpose)
    command = ["sh", "-c", SWAP_SCRIPT, "safehold-swap", token, *meta]
    labels = {SWAP_LABEL: token}
    with helper_container(
        client, image, volume, command, events, read_only=False, labels=labels
    ) as helper:
        try:
            before = root_mtime(client, helper)
            _put_file(client, helper, BEFORE, before)
            if journal_to is not None and entry is not None:
                entry = _amend(journal_to, entry, before=before)
            # At /, not /v: the engine sets a hardlink's mode again (its chown cleared set-id
            # bits) only when it finds the link's target from its working folder, which is /.
            events(Event("restore", f"unpacking the archive into volume {volume}"))
            client.api.put_archive(str(helper.id), "/", archive)
            _put_file(client, helper, GO_MARKER, "")
        except DOCKER_ERRORS as exc:
            status = -1
            with contextlib.suppress(*DOCKER_ERRORS):
                status, _ = run_helper(helper)  # without the marker it removes the staging folder
            if status == 3:
                _settled(journal_to, entry)
            else:
                _leftover(events, volume, f"{STAGE}{token}", entry)
            raise RestoreError(
                f"the Docker engine could not unpack the archive into volume {volume}: {exc}",
                hint="check free space in the volume; its content was left as it was",
            ) from exc
        events(Event("restore", f"unpacked the archive in volume {volume}; swapping it in"))
        try:
            status, log = run_helper(helper)
        except DOCKER_ERRORS as exc:
            _leftover(events, volume, f"{STAGE}{token}", entry)
            raise RestoreError(
                f"the helper that swaps the new content into volume {volume} did not run "
                f"to its end: {exc}",
                hint=_unsettled_hint(entry)
                or "the volume most likely keeps its previous content (check it); the "
                "helper's busybox must suit the engine's CPU architecture",
            ) from exc
    _report(status, log, volume, token, events, journal_to, entry)


def root_mtime(client: docker.DockerClient, helper: Container) -> str:
    """The mtime (whole seconds) of the volume root the created ``helper`` mounts, from the
    engine's stat of the path (a HEAD request: the volume's content is not read)."""
    api = client.api
    url = f"{api.base_url}/v{api.api_version}/containers/{helper.id}/archive"
    response = api.head(url, params={"path": MOUNT})
    response.raise_for_status()
    stat = decode_json_header(response.headers["X-Docker-Container-Path-Stat"])
    # RFC 3339 with up to nine fractional digits, which datetime does not parse.
    found = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)", str(stat["mtime"]))
    if found is None:
        return ""
    return str(math.floor(datetime.fromisoformat(found[1] + found[2]).timestamp()))


def _put_file(client: docker.DockerClient, helper: Container, name: str, text: str) -> None:
    """A small file at / of the helper's own rootfs (not the volume)."""
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.mode, info.size = 0o600, len(data)
    body = info.tobuf(tarfile.GNU_FORMAT) + data + bytes(-len(data) % tarfile.BLOCKSIZE)
    client.api.put_archive(str(helper.id), "/", io.BytesIO(body + bytes(2 * tarfile.BLOCKSIZE)))


def _amend(journal_to: SwapJournal, entry: journal.Entry, **more: object) -> journal.Entry:
    """The entry with ``more`` in its data, written atomically over it."""
    amended = dataclasses.replace(entry, data={**entry.data, **more})
    body = json.dumps(amended.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    journal_to.storage.put_bytes(amended.key, body)
    return amended


def _report(
    status: int,
    log: str,
    volume: str,
    token: str,
    events: EventSink,
    journal_to: SwapJournal | None,
    entry: journal.Entry | None,
) -> None:
    if status in (0, 1, 2):
        _settled(journal_to, entry)
    if status == 4:
        _leftover(events, volume, f"{OLD}{token}", entry)
    elif status == 2:
        raise RestoreError(
            f"restored volume {volume}, but not its root folder's owner, mode or mtime: {log}",
            hint="the content is restored; set the volume root's owner and mode by hand",
        )
    elif status == 1:
        raise RestoreError(
            f"swapping the new content into volume {volume} failed (exit 1): {log}",
            hint="the volume keeps its previous content; check free space in it and retry",
        )
    elif status != 0:
        _leftover(events, volume, f"{STAGE}{token}", entry)
        raise RestoreError(
            f"swapping the new content into volume {volume} stopped half-way (exit {status}): "
            f"{log}",
            hint=_unsettled_hint(entry) or "the helper was stopped midway: check the volume",
        )


def _settled(journal_to: SwapJournal | None, entry: journal.Entry | None) -> None:
    if journal_to is not None and entry is not None:
        journal.done(journal_to.storage, entry)


def _unsettled_hint(entry: journal.Entry | None) -> str:
    if entry is None:
        return ""
    return (
        "the swap is journalled: the next safehold command finishes it or puts the previous "
        "content back, and says which"
    )


def _leftover(
    events: EventSink, volume: str, folder: str, entry: journal.Entry | None = None
) -> None:
    then = "the next safehold command removes it" if entry is not None else "delete it"
    events(Event("restore", f"could not remove {folder} in volume {volume}; {then}", "warning"))


# ---- recovery ----------------------------------------------------------------------------


def clear_helpers(
    client: docker.DockerClient, token: str, wait_s: float = HELPER_WAIT_S
) -> int | None:
    """Let the swap's helpers end (a dead run's swap may still be running: cutting it would
    only leave more to undo), at most ``wait_s`` in all, then remove them. Returns the swap
    helper's exit status, NEVER_STARTED, or None (none found, or it was stopped)."""
    found = client.containers.list(all=True, filters={"label": f"{SWAP_LABEL}={token}"})
    deadline = time.monotonic() + wait_s
    ended: int | None = None
    for helper in found:
        if helper.status in ("running", "restarting", "paused"):
            with contextlib.suppress(*DOCKER_ERRORS):
                helper.wait(timeout=max(1, math.ceil(deadline - time.monotonic())))
        with contextlib.suppress(docker.errors.NotFound):
            helper.reload()
            status = (helper.attrs.get("State") or {}).get("Status")
            if "safehold-swap" in ((helper.attrs.get("Config") or {}).get("Cmd") or []):
                if status == "created":
                    ended = NEVER_STARTED
                elif status == "exited":
                    ended = int(helper.attrs["State"].get("ExitCode", -1))
            helper.remove(force=True)
    return ended


def recover_volume(
    client: docker.DockerClient,
    volume: str,
    token: str,
    meta: list[str],
    before: str,
    events: EventSink,
) -> tuple[int, int, bool]:
    """Undo or finish the swap ``token`` left in ``volume`` (``meta``: the archive root's, for
    a finish; ``before``: the root's mtime, for an undo): (what was done: 10 nothing left, 11
    staging removed, 12 rolled back, 13 finished; entries moved; root meta not set)."""
    image = ensure_busybox_image(client)
    command = ["sh", "-c", RECOVER_SCRIPT, "safehold-recover", token, *meta, before]
    labels = {SWAP_LABEL: token}  # a recovery killed in turn is found by the next one
    with helper_container(
        client, image, volume, command, events, read_only=False, labels=labels
    ) as helper:
        status, log = run_helper(helper)
        out = helper.logs(stdout=True, stderr=False).decode("utf-8", "replace").split()
    if status not in (10, 11, 12, 13):
        raise RestoreError(f"recovering volume {volume} failed (exit {status}): {log}")
    moved, meta_failed = (int(out[-2]), out[-1] == "1") if len(out) >= 2 else (0, False)
    return status, moved, meta_failed
