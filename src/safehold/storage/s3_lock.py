"""One lock per repository on a bucket, for many hosts backing up under their own prefixes.

The lock is the object ``<prefix>/.safehold/lock`` holding a JSON record (owner token, host, pid,
purpose, since, heartbeat, expires, ttl). The rules:

1. Take: PutObject with ``If-None-Match: *``. The server creates it for exactly one contender;
   the others get 412 Precondition Failed.
2. Hold: a heartbeat thread rewrites the record every ``ttl / 4`` with ``If-Match: <our ETag>``.
   A 412 there means someone took the lock over: the lock is *lost* (``lost``/``check()``), and
   the holder must not commit anything more. A heartbeat that cannot reach the server for a whole
   ``ttl`` also counts as lost.
3. Stale: a record is stale when the server's clock (the response's ``Date``) is more than the
   holder's ``ttl`` past the object's ``LastModified`` (its last heartbeat, also server time), so
   clocks of the hosts never matter; or at once when the holder ran on this host and its pid is
   gone. Unreadable records go stale after the default ttl.
4. Take over a stale lock: PutObject with ``If-Match: <the stale record's ETag>``: of several
   contenders exactly one wins; the rest see 412 and go back to waiting.
5. Release: DeleteObject with ``If-Match: <our ETag>``, so a holder that lost its lock never
   deletes the new holder's (servers without conditional deletes: read, compare owner, delete).

Before the first take, a private probe object checks that the server honours ``If-None-Match``;
one that silently ignores it cannot give mutual exclusion, and the lock refuses to pretend.
The lock is exclusive only: readers (list, restore) do not take it on S3.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from .._proc import pid_alive
from ..errors import LockBusy, StorageError
from ..naming import LOCK_FILE
from .s3 import S3Storage
from .s3_client import error_code, http_status, is_not_found, is_precondition_failed

DEFAULT_TTL = 120.0
POLL_S = 1.0
UNSUPPORTED_CODES = frozenset({"NotImplemented", "501"})


@dataclass(frozen=True)
class LockHolder:
    owner: str
    host: str
    pid: int
    purpose: str
    since: str
    heartbeat: str
    expires: str
    ttl: float

    def describe(self) -> str:
        return (
            f"pid {self.pid} on {self.host} ({self.purpose}) since {self.since}, "
            f"last heartbeat {self.heartbeat}"
        )

    @classmethod
    def parse(cls, raw: bytes) -> LockHolder | None:
        try:
            data = json.loads(raw)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class _Seen:
    holder: LockHolder | None
    etag: str
    stale: bool


class S3Lock:
    """``with S3Lock(storage, purpose="backup").hold(timeout=600) as replaced: ...``."""

    def __init__(
        self,
        storage: S3Storage,
        *,
        purpose: str,
        ttl: float = DEFAULT_TTL,
        poll: float = POLL_S,
        heartbeat: bool = True,
        host: str | None = None,
    ) -> None:
        self.storage = storage
        self.key = storage.object_key(LOCK_FILE)
        self.purpose = purpose
        self.ttl = ttl
        self.poll = poll
        self.host = host or socket.gethostname()
        self.owner = secrets.token_hex(12)
        self._heartbeat_enabled = heartbeat
        self._since = ""
        self._etag: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probed = False

    @property
    def held(self) -> bool:
        return self._etag is not None and not self._lost.is_set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise when the lock was taken over: call before each commit point."""
        if self._lost.is_set():
            raise LockBusy(
                f"the lock on {self.storage.url} was lost (taken over after missed heartbeats)",
                hint="nothing more was committed; check the network to the S3 endpoint and rerun",
            )

    def acquire(self, timeout: float) -> LockHolder | None:
        """Take the lock, waiting up to ``timeout`` s; returns the stale holder replaced, if any."""
        assert self._etag is None, "acquire twice"
        if not self._probed:
            self._probe()
        deadline = time.monotonic() + timeout
        while True:
            self._since = _now()
            etag = self._put(IfNoneMatch="*")
            if etag is not None:
                return self._won(etag, None)
            seen = self._read()
            if seen is not None and seen.stale:
                etag = self._put(IfMatch=seen.etag)
                if etag is not None:
                    return self._won(etag, seen.holder)
            if time.monotonic() >= deadline:
                raise self._busy(seen, timeout)
            if seen is not None:  # else: released between our two requests, try again at once
                time.sleep(self.poll)

    def _busy(self, seen: _Seen | None, timeout: float) -> LockBusy:
        holder = seen.holder if seen is not None else None
        who = holder.describe() if holder else "another run (its lock record is unreadable)"
        ttl = holder.ttl if holder else self.ttl
        return LockBusy(
            f"the repository {self.storage.url} is locked by {who}",
            hint=f"wait for it to finish, or allow a longer wait with --lock-timeout (waited "
            f"{timeout:.0f}s); a holder whose heartbeat stops is taken over {ttl:.0f}s later",
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        etag, self._etag = self._etag, None
        if etag is None or self._lost.is_set():
            return
        client, bucket = self.storage.client, self.storage.bucket
        try:
            client.delete_object(Bucket=bucket, Key=self.key, IfMatch=etag)
        except Exception as exc:
            if is_precondition_failed(exc) or is_not_found(exc):
                return  # no longer ours (or already gone): leave the new holder's record alone
            if not _unsupported(exc):
                raise self.storage.fail(exc, "release the lock", LOCK_FILE) from exc
            seen = self._read()
            if seen is not None and seen.holder is not None and seen.holder.owner == self.owner:
                self.storage.delete(LOCK_FILE)

    def holder(self) -> LockHolder | None:
        """Who holds the lock now (stale or not), or ``None``."""
        seen = self._read()
        return seen.holder if seen is not None else None

    @contextmanager
    def hold(self, timeout: float) -> Iterator[LockHolder | None]:
        replaced = self.acquire(timeout)
        try:
            yield replaced
        finally:
            self.release()

    # ---- the pieces ----

    def _record(self) -> bytes:
        now = datetime.now(UTC)
        holder = LockHolder(
            owner=self.owner,
            host=self.host,
            pid=os.getpid(),
            purpose=self.purpose,
            since=self._since,
            heartbeat=now.isoformat(timespec="seconds"),
            expires=(now + timedelta(seconds=self.ttl)).isoformat(timespec="seconds"),
            ttl=self.ttl,
        )
        return json.dumps(asdict(holder)).encode()

    def _put(self, **condition: str) -> str | None:
        """A conditional PutObject of our record: the new ETag, or ``None`` when it lost."""
        try:
            response = self.storage.client.put_object(
                Bucket=self.storage.bucket,
                Key=self.key,
                Body=self._record(),
                ContentType="application/json",
                **condition,  # type: ignore[arg-type]
            )
        except Exception as exc:
            if is_precondition_failed(exc) or is_not_found(exc):
                return None
            if error_code(exc) in ("ConditionalRequestConflict", "409"):
                return None  # a concurrent conditional write on the same key: ask again
            raise self.storage.fail(exc, "write the lock", LOCK_FILE) from exc
        return str(response["ETag"])

    def _read(self) -> _Seen | None:
        try:
            response = self.storage.client.get_object(Bucket=self.storage.bucket, Key=self.key)
            raw = response["Body"].read()
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise self.storage.fail(exc, "read the lock", LOCK_FILE) from exc
        holder = LockHolder.parse(raw)
        ttl = holder.ttl if holder is not None else DEFAULT_TTL
        server_now = _server_time(response) or datetime.now(UTC)
        age = (server_now - response["LastModified"]).total_seconds()
        stale = age > ttl or (holder is not None and self._dead_here(holder))
        return _Seen(holder, str(response["ETag"]), stale)

    def _dead_here(self, holder: LockHolder) -> bool:
        return holder.host == self.host and holder.pid != os.getpid() and not pid_alive(holder.pid)

    def _won(self, etag: str, replaced: LockHolder | None) -> LockHolder | None:
        self._etag = etag
        self._lost.clear()
        self._stop.clear()
        if self._heartbeat_enabled:
            self._thread = threading.Thread(
                target=self._beat, name="safehold-s3-lock-heartbeat", daemon=True
            )
            self._thread.start()
        return replaced

    def _beat(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.ttl / 4):
            etag = self._etag
            if etag is None:
                return
            try:
                new = self._put(IfMatch=etag)
            except StorageError:
                new = ""  # unreachable for now: try again next beat
            if new is None:
                self._lost.set()
                return
            if new:
                self._etag, last_ok = new, time.monotonic()
            elif time.monotonic() - last_ok > self.ttl:
                self._lost.set()
                return

    def _probe(self) -> None:
        """Refuse to lock on a server that ignores ``If-None-Match`` (no mutual exclusion)."""
        key = f"{LOCK_FILE}-probe-{self.owner}"
        client, bucket = self.storage.client, self.storage.bucket
        full = self.storage.object_key(key)
        try:
            client.put_object(Bucket=bucket, Key=full, Body=b"probe")
        except Exception as exc:
            raise self.storage.fail(exc, "write the lock", key) from exc
        try:
            client.put_object(Bucket=bucket, Key=full, Body=b"again", IfNoneMatch="*")
            honoured = False
        except Exception as exc:
            if not is_precondition_failed(exc) and not _unsupported(exc):
                raise self.storage.fail(exc, "check conditional writes", key) from exc
            honoured = is_precondition_failed(exc)
        finally:
            with contextlib.suppress(StorageError):
                self.storage.delete(key)
        if not honoured:
            raise StorageError(
                f"the S3 server at {self.storage.settings.endpoint_name} does not honour "
                "conditional writes (If-None-Match), so a lock on the bucket cannot be exclusive",
                hint="use a server that supports If-None-Match on PutObject (AWS S3 and "
                "SeaweedFS do), or give each host its own bucket and never run two at once",
            )
        self._probed = True


def _unsupported(exc: BaseException) -> bool:
    return error_code(exc) in UNSUPPORTED_CODES or http_status(exc) == 501


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _server_time(response: Any) -> datetime | None:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return None
