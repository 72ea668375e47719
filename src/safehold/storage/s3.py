"""A repository under a prefix of an S3 bucket (AWS S3 or any S3-compatible server).

Keys are the same repository-relative keys as on local disk (``db_backup_...sql``,
``.safehold/manifests/x.json``); the object name is ``<prefix>/<key>``. Uploads stream as multipart
uploads and become visible only on commit (``s3_writer``); reads stream and resume a broken
download where it stopped (same ETag, ``Range``); failures are safehold errors naming the
location and endpoint (``s3_client``).
"""

from __future__ import annotations

import builtins
import errno
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError, StorageError
from .s3_client import (
    ChecksumMode,
    RetryMode,
    S3Settings,
    error_code,
    is_not_found,
    is_transient,
    make_client,
    storage_error,
)
from .s3_writer import MIB, MIN_PART_SIZE, S3Writer, UploadTarget, UploadTuning, backoff

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client

READ_BUFFER = 1 * MIB


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str  # repository-relative
    upload_id: str
    initiated: datetime


class S3Storage:
    """``S3Storage("https://s3.example.com", "backups", "host-a")`` — see the module doc."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        ca_bundle: str | Path | None = None,
        profile: str | None = None,
        credentials_file: str | Path | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        part_size: int = 8 * MIB,
        concurrency: int = 4,
        retry_mode: RetryMode = "standard",
        max_attempts: int = 5,
        part_retries: int = 3,
        retry_base_delay: float = 1.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        checksums: ChecksumMode = "when_supported",
        allow_http: bool = False,
        list_page_size: int = 1000,
        client: S3Client | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 part size {part_size} is below S3's minimum of 5 MiB")
        if not bucket:
            raise ConfigError("an S3 location needs a bucket")
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.settings = S3Settings(
            endpoint_url=endpoint_url,
            region=region,
            ca_bundle=str(ca_bundle) if ca_bundle is not None else None,
            profile=profile,
            credentials_file=str(credentials_file) if credentials_file is not None else None,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            retry_mode=retry_mode,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            checksums=checksums,
            allow_http=allow_http,
        )
        self.tuning = UploadTuning(part_size, max(1, concurrency), part_retries, retry_base_delay)
        self.list_page_size = list_page_size
        self.client: S3Client = client if client is not None else make_client(self.settings)

    @property
    def description(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} ({self.settings.endpoint_name})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def object_key(self, key: str) -> str:
        """The object name of a repository key: ``<prefix>/<key>``."""
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise StorageError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.object_key(key) if key else self.prefix}"

    def fail(self, exc: BaseException, action: str, key: str = "") -> StorageError:
        return storage_error(exc, self.settings, self._where(key), action)

    def ensure(self) -> None:
        """Fail clearly now when the bucket is missing, unreachable or not ours to use."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if is_not_found(exc):
                raise StorageError(
                    f"the bucket {self.bucket!r} does not exist at {self.settings.endpoint_name}",
                    hint="create the bucket, or fix the bucket name in the location",
                ) from exc
            raise self.fail(exc, "open the bucket") from exc

    def open_writer(self, key: str) -> S3Writer:
        target = UploadTarget(
            self.client, self.bucket, self.object_key(key), self._where(key), self.settings
        )
        return S3Writer(target, self.tuning)

    def open_reader(self, key: str) -> IO[bytes]:
        raw = _ObjectReader(self, key)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)

    def read_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as reader:
            return reader.read()

    def put_bytes(self, key: str, data: bytes) -> None:
        """Atomic: one PutObject (multipart above a part), visible whole or not at all."""
        with self.open_writer(key) as writer:
            writer.write(data)

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def age(self, key: str) -> timedelta:
        """Since ``key`` was written, by the server's clock (its ``Date`` minus the object's
        ``LastModified``), so the clocks of the hosts never matter."""
        head = self._head(key)
        date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        modified: datetime = head["LastModified"]
        return max(timedelta(0), now - modified)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def _head(self, key: str) -> Any:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if is_not_found(exc):
                raise _not_found(key) from exc
            raise self.fail(exc, "look up", key) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if not is_not_found(exc):
                raise self.fail(exc, "delete", key) from exc

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys directly under ``prefix`` (a folder, as on disk), sorted; no subfolders."""
        folder = prefix.strip("/")
        base = f"{folder}/" if folder else ""
        object_base = self.object_key(folder) + "/" if folder else self._root()
        keys: builtins.list[str] = []
        for page in self.pages(object_base):
            for item in page.get("Contents", []):
                name = item["Key"][len(object_base) :]
                if name and not name.endswith("/"):
                    keys.append(base + name)
        return sorted(keys)

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def pages(self, object_prefix: str, *, recursive: bool = False) -> Iterator[Any]:
        """The pages of one listing of the bucket under ``object_prefix`` (an object name
        prefix, not a repository key): one level with its ``CommonPrefixes``, or every object
        below it with ``recursive``."""
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": object_prefix,
            "MaxKeys": self.list_page_size,
        }
        if not recursive:
            args["Delimiter"] = "/"
        while True:
            try:
                page = self.client.list_objects_v2(**args)
            except Exception as exc:
                raise self.fail(exc, "list") from exc
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    def local_path(self, key: str) -> Path | None:
        return None

    # ---- multipart uploads left behind (a killed process, an unreachable server) ----

    def pending_uploads(self) -> builtins.list[PendingUpload]:
        root = self._root()
        found: builtins.list[PendingUpload] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": root}
        while True:
            try:
                page = self.client.list_multipart_uploads(**args)
            except Exception as exc:
                raise self.fail(exc, "list unfinished uploads") from exc
            for upload in page.get("Uploads", []):
                found.append(
                    PendingUpload(
                        upload["Key"][len(root) :], upload["UploadId"], upload["Initiated"]
                    )
                )
            if not page.get("IsTruncated"):
                return found
            args["KeyMarker"] = page.get("NextKeyMarker", "")
            args["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def abort_stale_uploads(
        self, older_than: timedelta = timedelta(hours=24), prefix: str = ""
    ) -> builtins.list[str]:
        """Abort unfinished uploads under ``prefix`` started before ``older_than`` ago; returns
        their keys.

        The S3 analogue of ``LocalStorage.remove_stale_partials``. A bucket lifecycle rule
        (AbortIncompleteMultipartUpload) does the same on the server side.
        """
        cutoff = datetime.now(UTC) - older_than
        removed = []
        for upload in self.pending_uploads():
            if upload.initiated > cutoff or not upload.key.startswith(prefix):
                continue
            try:
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self._root() + upload.key, UploadId=upload.upload_id
                )
            except Exception as exc:
                if not is_not_found(exc) and error_code(exc) != "NoSuchUpload":
                    raise self.fail(exc, "abort an unfinished upload", upload.key) from exc
            removed.append(upload.key)
        return removed


class _ObjectReader(io.RawIOBase):
    """A GetObject body as a raw stream. A broken download resumes where it stopped (``Range``,
    ``If-Match`` the same ETag: never a splice of two versions), after a backoff."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        super().__init__()
        self._s = storage
        self._key = key
        self._pos = 0
        self._etag: str | None = None
        try:
            self._body: StreamingBody | None = self._open()
        except Exception as exc:
            if is_not_found(exc):
                raise _not_found(key) from exc
            raise storage.fail(exc, "read", key) from exc

    def _open(self) -> StreamingBody:
        args: dict[str, Any] = {"Bucket": self._s.bucket, "Key": self._s.object_key(self._key)}
        if self._etag is not None:
            args.update(Range=f"bytes={self._pos}-", IfMatch=self._etag)
        response = self._s.client.get_object(**args)
        self._etag = response.get("ETag")
        return response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        failures = 0
        while True:
            try:
                if self._body is None:
                    self._body = self._open()
                chunk = self._body.read(len(view))
                break
            except Exception as exc:
                if failures >= self._s.tuning.part_retries or not is_transient(exc):
                    raise self._s.fail(exc, "read", self._key) from exc
                if self._body is not None:
                    self._body.close()
                    self._body = None
                backoff(self._s.tuning.retry_base_delay, failures)
                failures += 1
        view[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        if not self.closed and self._body is not None:
            self._body.close()
        super().close()


def _clean_prefix(prefix: str) -> str:
    cleaned = prefix.strip("/")
    if cleaned and any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ConfigError(f"invalid S3 prefix {prefix!r}")
    return cleaned


def _not_found(key: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such object", key)
