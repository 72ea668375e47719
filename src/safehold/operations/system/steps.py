"""The steps of a whole-system restore that are not restores: verify the set's members before
anything stops, run the post-restore commands, and prove the result (the database answers, the
health URL returns 200).

They sit on the recovery clock the operator measures (issue 13: the whole may cost at most a
tenth more than its database and volume restores), so what they add is kept small: the members
are hashed at once, one per core, and the health URL is polled often at first.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ... import _proc
from ...errors import HookFailed, RestoreError
from ...model import Event, EventSink, Manifest
from ...sources.postgres import PgTarget, connect
from ...storage import LocalStorage
from .._pipeline import Progress, check_digest, sha256_of

HEALTH_POLL_S = 1.0  # the longest wait between two polls of the health URL
HEALTH_FIRST_POLL_S = 0.05  # the first wait; doubled after each miss up to HEALTH_POLL_S
POST_OUTPUT_LINES = 20


def verify_members(members: list[Manifest], storage: LocalStorage, sink: EventSink) -> None:
    """Every member's sha256 and size against its manifest; the first damaged one (in the plan's
    order) is the error. Read at once, one per core: hashlib hashes outside the GIL, and this
    step holds the whole restore back while nothing has been stopped yet."""

    def digest(manifest: Manifest) -> tuple[str, int]:
        with storage.open_reader(manifest.artifact) as raw:
            return sha256_of(raw, Progress(sink, f"verify {manifest.artifact}", manifest.size))

    if not members:
        return
    workers = max(1, min(len(members), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="safehold-verify") as pool:
        futures = [pool.submit(digest, m) for m in members]
        for manifest, future in zip(members, futures, strict=True):
            got, size = future.result()
            check_digest(manifest.artifact, manifest.sha256, got, manifest.size, size)


def post_command(command: str, database: PgTarget | None, sink: EventSink) -> None:
    """On this host with ``sh -c`` (e.g. ``docker compose run --rm app npm run migrate``),
    the database's libpq settings in its environment."""
    env = database.env() | {"PGDATABASE": database.dbname} if database else {}
    done = _proc.run(["sh", "-c", command], env=env)
    lines = (done.stdout + done.stderr).splitlines()
    for line in lines[-POST_OUTPUT_LINES:]:
        sink(Event("hook", f"post-restore: {line}"))
    if done.returncode != 0:
        tail = " | ".join(lines[-3:]) or "no output"
        raise HookFailed(
            f"post-restore command {command!r} failed (exit {done.returncode}): {tail}",
            hint="fix the command and continue from this step",
        )


def count_tables(target: PgTarget) -> int:
    with connect(target) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_healthy(url: str, timeout: float) -> float:
    """Poll ``url`` until it answers 200; the seconds waited. An application answers a moment
    after its container starts: a fixed 1 s between polls would add up to a second to every
    restore, so the waits start short and double up to ``HEALTH_POLL_S``."""
    began = time.monotonic()
    deadline = began + timeout
    pause = HEALTH_FIRST_POLL_S
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=min(10.0, timeout)) as answer:  # noqa: S310
                if answer.status == 200:
                    return time.monotonic() - began
                last = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        now = time.monotonic()
        if now >= deadline:
            raise RestoreError(
                f"{url} did not answer 200 within {timeout:.0f}s (last: {last})",
                hint="the data is restored and the containers run; check the application's "
                "logs (docker logs NAME)",
            )
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, HEALTH_POLL_S)
