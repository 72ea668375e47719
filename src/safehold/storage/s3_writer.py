"""A streamed S3 upload: nothing visible under the key until ``commit()``.

``write()`` fills one part in memory; a full part goes to a small thread pool (``concurrency``
parts in flight), so memory stays near ``(concurrency + 1) * part_size`` however big the stream.
``commit()`` is CompleteMultipartUpload (or a single PutObject when the whole stream fit in one
part); ``abort()`` and any exception inside ``with`` are AbortMultipartUpload. Parts past every
2,000th double (8 MiB parts reach ~490 GiB within S3's 10,000-part limit).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StorageError
from .s3_client import S3Settings, is_transient, storage_error

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
GROW_EVERY = 2_000
T = TypeVar("T")


@dataclass(frozen=True)
class UploadTuning:
    part_size: int = 8 * MIB
    concurrency: int = 4
    part_retries: int = 3  # on top of botocore's own attempts, for longer outages
    retry_base_delay: float = 1.0


@dataclass(frozen=True)
class UploadTarget:
    client: S3Client
    bucket: str
    key: str
    where: str  # s3://bucket/prefix/key, for messages
    settings: S3Settings


def backoff(base: float, attempt: int) -> None:
    """Sleep ``base * 2**attempt`` seconds, with jitter so many clients do not retry in step."""
    time.sleep(base * 2**attempt * (0.5 + random.random() / 2))  # noqa: S311 - jitter only


def part_size_for(number: int, base: int) -> int:
    """Part ``number`` (1-based): ``base`` for the first 2,000 parts, then doubling."""
    return int(min(base * 2 ** ((number - 1) // GROW_EVERY), MAX_PART_SIZE))


class S3Writer:
    def __init__(self, target: UploadTarget, tuning: UploadTuning) -> None:
        self._t = target
        self._tuning = tuning
        self._checksum = target.settings.checksums == "when_supported"
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._next_part = 1
        self._done: dict[int, CompletedPartTypeDef] = {}
        self._inflight: set[Future[CompletedPartTypeDef]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._open = True
        self.bytes_written = 0
        # Set when the server could not be told to drop the parts (it was unreachable);
        # ``S3Storage.abort_stale_uploads`` removes them later.
        self.dangling_upload_id: str | None = None

    @property
    def upload_id(self) -> str | None:
        return self._upload_id

    def write(self, data: bytes | memoryview) -> int:
        assert self._open, "write after commit/abort"
        size = len(data)
        self._buffer += data
        self.bytes_written += size
        try:
            while len(self._buffer) >= part_size_for(self._next_part, self._tuning.part_size):
                wanted = part_size_for(self._next_part, self._tuning.part_size)
                with memoryview(self._buffer) as view, view[:wanted] as head:
                    part = bytes(head)  # the one copy; the view is gone before the resize
                del self._buffer[:wanted]
                self._submit(part)
        except BaseException:
            self.abort()
            raise
        return size

    def commit(self) -> None:
        assert self._open, "commit after commit/abort"
        try:
            if self._upload_id is None:
                body = bytes(self._buffer)
                self._buffer = bytearray()
                self._call("upload", lambda: self._t.client.put_object(**self._put_args(body)))
            else:
                if self._buffer:
                    part = bytes(self._buffer)
                    self._buffer = bytearray()
                    self._submit(part)
                self._drain(0)
                upload_id = self._upload_id
                parts = [self._done[n] for n in sorted(self._done)]
                self._call(
                    "complete the upload",
                    lambda: self._t.client.complete_multipart_upload(
                        Bucket=self._t.bucket,
                        Key=self._t.key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    ),
                )
                self._upload_id = None
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._shutdown()

    def abort(self) -> None:
        """Drop everything sent so far; never raises (the caller is already failing)."""
        self._open = False
        self._buffer = bytearray()
        for future in self._inflight:
            future.cancel()
        with contextlib.suppress(BaseException):
            wait(self._inflight)
        self._inflight.clear()
        self._shutdown()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None:
            try:
                self._t.client.abort_multipart_upload(
                    Bucket=self._t.bucket, Key=self._t.key, UploadId=upload_id
                )
            except Exception:
                self.dangling_upload_id = upload_id

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._open:
            self.commit()
        else:
            self.abort()

    # ---- parts ----

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._call("start the upload", self._create)
        number = self._next_part
        if number > MAX_PARTS:
            raise StorageError(
                f"{self._t.where} would need more than {MAX_PARTS} parts",
                hint="raise the location's part size",
            )
        self._next_part += 1
        if self._tuning.concurrency <= 1:
            self._done[number] = self._upload_part(number, part)
            return
        self._drain(self._tuning.concurrency - 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._tuning.concurrency, "safehold-s3-part")
        self._inflight.add(self._pool.submit(self._upload_part, number, part))

    def _drain(self, keep: int) -> None:
        """Wait until at most ``keep`` parts are in flight; the first failure is raised."""
        while len(self._inflight) > keep:
            finished, self._inflight = wait(self._inflight, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()
                self._done[result["PartNumber"]] = result

    def _create(self) -> str:
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if self._checksum else {}
        response = self._t.client.create_multipart_upload(
            Bucket=self._t.bucket, Key=self._t.key, **extra
        )
        return response["UploadId"]

    def _upload_part(self, number: int, body: bytes) -> CompletedPartTypeDef:
        upload_id = self._upload_id
        assert upload_id is not None
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if self._checksum else {}

        def send() -> CompletedPartTypeDef:
            response = self._t.client.upload_part(
                Bucket=self._t.bucket,
                Key=self._t.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                **extra,
            )
            done: CompletedPartTypeDef = {"ETag": response["ETag"], "PartNumber": number}
            if "ChecksumCRC32" in response:
                done["ChecksumCRC32"] = response["ChecksumCRC32"]
            return done

        return self._call(f"upload part {number}", send)

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """``fn`` with a second, slower retry loop for outages longer than botocore's."""
        attempt = 0
        while True:
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                if attempt < self._tuning.part_retries and is_transient(exc):
                    backoff(self._tuning.retry_base_delay, attempt)
                    attempt += 1
                    continue
                raise storage_error(exc, self._t.settings, self._t.where, action) from exc

    def _put_args(self, body: bytes) -> dict[str, Any]:
        return {"Bucket": self._t.bucket, "Key": self._t.key, "Body": body}

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
