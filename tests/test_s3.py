"""What only S3 has: a server that dies mid-upload, retries across an outage, pages of listings,
credentials and TLS, clear failures, and the lock on the bucket. All against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from safehold.errors import ConfigError, LockBusy, StorageError
from safehold.sandbox.s3server import SandboxS3, free_ports
from safehold.storage import S3Storage
from safehold.storage.s3_lock import S3Lock

from .conftest import start_s3

pytestmark = pytest.mark.service

MIB = 1024 * 1024
PART = 5 * MIB
FAST_FAIL: dict[str, Any] = {"max_attempts": 2, "part_retries": 0, "connect_timeout": 2}


@pytest.fixture(scope="module")
def bucket(s3: SandboxS3) -> str:
    return s3.bucket()


@pytest.fixture
def own_server() -> Iterator[SandboxS3]:
    """A server of this test's own, free to be killed and restarted."""
    server = start_s3()
    try:
        yield server
    finally:
        server.remove()


# ---- a server killed mid-upload; an outage ridden out ----


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_server_killed_mid_upload_is_a_clear_error_and_leaves_nothing(
    own_server: SandboxS3, concurrency: int
) -> None:
    bucket = own_server.bucket()
    storage = own_server.storage(
        bucket, "host-a", part_size=PART, concurrency=concurrency, **FAST_FAIL
    )
    writer = storage.open_writer("db_backup_20240101_000000.sql")
    writer.write(os.urandom(6 * MIB))  # the first part is on its way
    upload_id = writer.upload_id
    assert upload_id is not None
    own_server.kill()
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        for _ in range(4):
            writer.write(os.urandom(5 * MIB))
        writer.commit()
    assert time.monotonic() - started < 60
    assert own_server.endpoint in caught.value.message
    assert "cannot reach" in caught.value.message or "broke" in caught.value.message
    assert caught.value.hint
    assert writer.dangling_upload_id == upload_id  # the server was gone: it could not be told

    own_server.start()  # the same ports and data, as after a reboot
    assert not storage.exists("db_backup_20240101_000000.sql")
    assert storage.list() == []
    assert [u.key for u in storage.pending_uploads()] == ["db_backup_20240101_000000.sql"]
    assert storage.abort_stale_uploads(older_than=timedelta(hours=1)) == []  # too young
    assert storage.abort_stale_uploads(older_than=timedelta(0)) == ["db_backup_20240101_000000.sql"]
    assert storage.pending_uploads() == []


def test_an_upload_rides_out_a_short_outage(own_server: SandboxS3) -> None:
    bucket = own_server.bucket()
    storage = own_server.storage(
        bucket,
        "host-a",
        part_size=PART,
        concurrency=1,
        max_attempts=2,
        part_retries=6,
        retry_base_delay=0.5,
    )
    data = os.urandom(17 * MIB)
    with storage.open_writer("v.tar.gz") as writer:
        writer.write(data[: 6 * MIB])
        own_server.kill()
        restart = threading.Timer(1.0, own_server.start)
        restart.start()
        try:
            writer.write(data[6 * MIB :])  # parts 2 and 3 wait for the server to come back
        finally:
            restart.join()
    assert hashlib.sha256(storage.read_bytes("v.tar.gz")).digest() == hashlib.sha256(data).digest()
    assert storage.pending_uploads() == []


def test_a_download_resumes_after_the_server_comes_back(own_server: SandboxS3) -> None:
    bucket = own_server.bucket()
    storage = own_server.storage(bucket, "", max_attempts=2, part_retries=6, retry_base_delay=0.5)
    data = os.urandom(48 * MIB)
    storage.put_bytes("big.bin", data)
    digest = hashlib.sha256()
    with storage.open_reader("big.bin") as reader:
        digest.update(reader.read(MIB))
        own_server.kill()
        restart = threading.Timer(1.0, own_server.start)
        restart.start()
        try:
            while chunk := reader.read(MIB):
                digest.update(chunk)
        finally:
            restart.join()
    assert digest.digest() == hashlib.sha256(data).digest()


def test_a_download_never_splices_two_versions(own_server: SandboxS3) -> None:
    bucket = own_server.bucket()
    storage = own_server.storage(bucket, "", max_attempts=2, part_retries=6, retry_base_delay=0.5)
    storage.put_bytes("k", b"a" * (48 * MIB))
    with storage.open_reader("k") as reader:
        assert reader.read(MIB) == b"a" * MIB
        storage.put_bytes("k", b"b" * (48 * MIB))  # replaced while being read
        own_server.kill()  # the connection breaks: the reader must resume
        own_server.start()
        with pytest.raises(StorageError, match="PreconditionFailed"):
            while reader.read(MIB):
                pass


# ---- listing ----


def test_listing_pages_past_1000_keys(s3: SandboxS3, bucket: str) -> None:
    storage = s3.storage(bucket, "many")
    names = [f".safehold/manifests/db_backup_{n:05d}.json" for n in range(1050)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: storage.put_bytes(name, b"{}"), names))
    calls: list[str] = []
    storage.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **kwargs: calls.append("list")
    )
    assert storage.list(".safehold/manifests") == names
    assert len(calls) == 2  # 1000 + 50: S3's page limit, followed by its continuation token
    assert storage.list() == []


def test_hosts_share_a_bucket_under_their_own_prefixes(s3: SandboxS3, bucket: str) -> None:
    one = s3.storage(bucket, "hosts/a")
    two = s3.storage(bucket, "hosts/b")
    one.put_bytes("db_backup_20240101_000000.sql", b"a")
    two.put_bytes("db_backup_20240101_000000.sql", b"b")
    assert one.read_bytes("db_backup_20240101_000000.sql") == b"a"
    assert two.list() == ["db_backup_20240101_000000.sql"]
    assert s3.storage(bucket, "hosts").list() == []  # prefixes are folders, not keys
    assert one.description == f"s3://{bucket}/hosts/a ({s3.endpoint})"
    assert one.local_path("db_backup_20240101_000000.sql") is None


# ---- clear failures ----


def test_a_missing_bucket_is_named(s3: SandboxS3) -> None:
    storage = s3.storage("no-such-bucket-here", "p", **FAST_FAIL)
    with pytest.raises(StorageError) as caught:
        storage.ensure()
    assert "no-such-bucket-here" in caught.value.message
    assert s3.endpoint in caught.value.message
    assert caught.value.hint and "create the bucket" in caught.value.hint
    with pytest.raises(StorageError, match="does not exist"):
        storage.list()
    with pytest.raises(StorageError, match="does not exist"):
        storage.put_bytes("k", b"1")
    with pytest.raises(StorageError, match="does not exist"), storage.open_writer("k") as writer:
        writer.write(os.urandom(9 * MIB))  # more than a part: CreateMultipartUpload fails


def test_wrong_credentials_are_access_denied(s3: SandboxS3, bucket: str) -> None:
    storage = s3.storage(bucket, "p", secret_access_key="not-the-secret", **FAST_FAIL)
    with pytest.raises(StorageError) as caught:
        storage.put_bytes("x", b"1")
    assert "access denied" in caught.value.message
    assert "not-the-secret" not in str(caught.value)
    assert caught.value.hint and "AWS_ACCESS_KEY_ID" in caught.value.hint
    unknown = s3.storage(bucket, "p", access_key_id="nobody", **FAST_FAIL)
    with pytest.raises(StorageError, match="access denied"):
        unknown.read_bytes("x")


def test_an_unreachable_endpoint_is_named(s3: SandboxS3) -> None:
    (port,) = free_ports(1)
    storage = s3.storage("bkt", endpoint_url=f"http://127.0.0.1:{port}", **FAST_FAIL)
    with pytest.raises(StorageError) as caught:
        storage.ensure()
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in caught.value.message
    assert caught.value.hint
    with pytest.raises(StorageError, match="cannot reach"), storage.open_writer("x") as writer:
        writer.write(b"1")


def test_plain_http_only_to_this_machine_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="plain HTTP"):
        S3Storage("http://s3.example.com", "bkt", access_key_id="a", secret_access_key="b")
    S3Storage(
        "http://s3.example.com", "bkt", allow_http=True, access_key_id="a", secret_access_key="b"
    )
    S3Storage("https://s3.example.com", "bkt", access_key_id="a", secret_access_key="b")
    S3Storage("http://localhost:8333", "bkt", access_key_id="a", secret_access_key="b")
    with pytest.raises(ConfigError):
        S3Storage("ftp://s3.example.com", "bkt")
    with pytest.raises(ConfigError):
        S3Storage("https://s3.example.com", "bkt", prefix="a/../b")
    with pytest.raises(ConfigError):
        S3Storage("https://s3.example.com", "bkt", part_size=MIB)


# ---- credentials: file + profile, the environment, none at all ----


@pytest.fixture
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials from this machine, and never a call to an instance metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("clean_aws_env")
def test_credentials_from_a_file_and_profile(s3: SandboxS3, bucket: str, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[nightly]\naws_access_key_id = {s3.access_key}\naws_secret_access_key = {s3.secret_key}\n"
    )
    storage = S3Storage(
        s3.endpoint, bucket, "creds", profile="nightly", credentials_file=credentials
    )
    storage.put_bytes("k", b"from a file")
    assert storage.read_bytes("k") == b"from a file"
    with pytest.raises(ConfigError, match="profile 'other' not found"):
        S3Storage(s3.endpoint, bucket, profile="other", credentials_file=credentials)
    with pytest.raises(ConfigError, match="does not exist"):
        S3Storage(s3.endpoint, bucket, credentials_file=tmp_path / "missing")


def test_credentials_from_the_environment(
    s3: SandboxS3, bucket: str, clean_aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    storage = S3Storage(s3.endpoint, bucket, "env")
    storage.put_bytes("k", b"from the environment")
    assert storage.list() == ["k"]


@pytest.mark.usefixtures("clean_aws_env")
def test_no_credentials_at_all_is_a_clear_error(s3: SandboxS3, bucket: str) -> None:
    storage = S3Storage(s3.endpoint, bucket, "none", max_attempts=1)
    with pytest.raises(StorageError) as caught:
        storage.put_bytes("k", b"1")
    assert "no usable S3 credentials" in caught.value.message
    assert caught.value.hint and "AWS_PROFILE" in caught.value.hint


# ---- TLS with a private CA ----


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    ext = folder / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    curve = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    steps = [
        f"req -x509 {curve} -keyout ca.key -out ca.pem -days 2 -subj /CN=safehold-test-CA "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        f"req -new {curve} -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem "
        f"-days 2 -extfile {ext}",
    ]
    for step in steps:
        subprocess.run(["openssl", *step.split()], cwd=folder, check=True, capture_output=True)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


def test_https_with_a_private_ca_bundle(tls_files: dict[str, Path]) -> None:
    server = start_s3(tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    try:
        bucket = server.bucket()
        trusted = server.storage(
            bucket, "tls", endpoint_url=server.https_endpoint, ca_bundle=tls_files["ca"]
        )
        trusted.put_bytes("k", b"over TLS")
        assert trusted.read_bytes("k") == b"over TLS"
        untrusted = server.storage(bucket, "tls", endpoint_url=server.https_endpoint, **FAST_FAIL)
        with pytest.raises(StorageError) as caught:
            untrusted.read_bytes("k")
        assert "TLS certificate" in caught.value.message
        assert caught.value.hint and "ca_bundle" in caught.value.hint
        with pytest.raises(ConfigError, match="CA bundle"):
            server.storage(bucket, endpoint_url=server.https_endpoint, ca_bundle="/nonexistent")
    finally:
        server.remove()


# ---- the lock on the bucket ----


def lock_storage(s3: SandboxS3, bucket: str) -> S3Storage:
    return s3.storage(bucket, f"locks/{time.monotonic_ns()}")


def race_once(storage: S3Storage, contenders: int) -> None:
    locks = [S3Lock(storage, purpose=f"backup {n}", host=f"host-{n}") for n in range(contenders)]
    start = threading.Barrier(contenders)
    outcomes: dict[int, str] = {}

    def contend(n: int) -> None:
        start.wait()
        try:
            locks[n].acquire(timeout=0)
            outcomes[n] = "won"
        except LockBusy as exc:
            outcomes[n] = exc.message

    with ThreadPoolExecutor(contenders) as pool:
        list(pool.map(contend, range(contenders)))
    winners = [n for n, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    for n, outcome in outcomes.items():
        if n != winner:
            assert f"on host-{winner} (backup {winner})" in outcome
    holder = locks[winner].holder()
    assert holder is not None and holder.host == f"host-{winner}"
    assert holder.pid == os.getpid() and holder.purpose == f"backup {winner}"
    locks[winner].release()
    assert locks[winner].holder() is None


def test_of_racing_contenders_exactly_one_wins(s3: SandboxS3, bucket: str) -> None:
    for _ in range(8):
        race_once(lock_storage(s3, bucket), contenders=6)


def test_holders_never_overlap(s3: SandboxS3, bucket: str) -> None:
    storage = lock_storage(s3, bucket)
    inside: list[int] = []
    overlaps: list[list[int]] = []
    turns: list[int] = []

    def worker(n: int) -> None:
        lock = S3Lock(storage, purpose="backup", host=f"host-{n}", poll=0.05)
        for _ in range(3):
            with lock.hold(timeout=60):
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                time.sleep(0.05)
                turns.append(n)
                inside.remove(n)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))
    assert overlaps == []
    assert sorted(turns) == sorted(list(range(4)) * 3)


def test_a_stale_lock_is_taken_over_by_exactly_one(s3: SandboxS3, bucket: str) -> None:
    storage = lock_storage(s3, bucket)
    dead = S3Lock(storage, purpose="crashed run", host="host-gone", ttl=2, heartbeat=False)
    dead.acquire(timeout=0)
    with pytest.raises(LockBusy, match="host-gone"):
        S3Lock(storage, purpose="x", host="host-b").acquire(timeout=0)
    contenders = [S3Lock(storage, purpose=f"c{n}", host=f"host-c{n}", poll=0.1) for n in range(3)]
    results: dict[int, object] = {}

    def contend(n: int) -> None:
        try:
            results[n] = contenders[n].acquire(timeout=6)
        except LockBusy as exc:
            results[n] = exc

    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(contend, range(3)))
    winners = [n for n, r in results.items() if not isinstance(r, LockBusy)]
    assert len(winners) == 1, results
    replaced = results[winners[0]]
    assert getattr(replaced, "host", None) == "host-gone"  # the winner learns whom it replaced
    assert time.monotonic() - started >= 1  # not before the ttl ran out (server clock, 1 s grain)
    dead.release()  # the crashed run comes back: it must not delete the new holder's lock
    holder = contenders[winners[0]].holder()
    assert holder is not None and holder.host == f"host-c{winners[0]}"
    contenders[winners[0]].release()


def test_the_heartbeat_keeps_a_live_lock(s3: SandboxS3, bucket: str) -> None:
    storage = lock_storage(s3, bucket)
    with S3Lock(storage, purpose="long backup", host="host-a", ttl=2).hold(timeout=0):
        time.sleep(4.5)  # more than twice the ttl
        with pytest.raises(LockBusy, match="long backup"):
            S3Lock(storage, purpose="x", host="host-b").acquire(timeout=0)


def test_a_lost_lock_is_noticed_and_not_deleted(s3: SandboxS3, bucket: str) -> None:
    storage = lock_storage(s3, bucket)
    lock = S3Lock(storage, purpose="backup", host="host-a", ttl=1.2)
    lock.acquire(timeout=0)
    lock.check()
    storage.put_bytes(".safehold/lock", b"taken over by someone else")
    deadline = time.monotonic() + 5
    while not lock.lost and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lock.lost
    with pytest.raises(LockBusy, match="lost"):
        lock.check()
    lock.release()
    assert storage.read_bytes(".safehold/lock") == b"taken over by someone else"


CHILD_LOCKER = """
import sys
from safehold.storage import S3Storage
from safehold.storage.s3_lock import S3Lock
endpoint, bucket, prefix, key, secret = sys.argv[1:]
storage = S3Storage(endpoint, bucket, prefix, access_key_id=key, secret_access_key=secret)
S3Lock(storage, purpose="child backup").acquire(timeout=5)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_holder_killed_on_this_host_is_replaced_at_once(s3: SandboxS3, bucket: str) -> None:
    storage = lock_storage(s3, bucket)
    args = [s3.endpoint, bucket, storage.prefix, s3.access_key, s3.secret_key]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_LOCKER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=f"pid {child.pid}"):
            S3Lock(storage, purpose="backup").acquire(timeout=0)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lock = S3Lock(storage, purpose="backup")  # the default ttl (120 s) has not run out
    replaced = lock.acquire(timeout=0)
    assert replaced is not None and replaced.pid == child.pid
    assert replaced.purpose == "child backup"
    lock.release()


def test_hosts_lock_their_own_prefixes_independently(s3: SandboxS3, bucket: str) -> None:
    one = S3Lock(s3.storage(bucket, "fleet/a"), purpose="backup", host="a")
    two = S3Lock(s3.storage(bucket, "fleet/b"), purpose="backup", host="b")
    with one.hold(timeout=0), two.hold(timeout=0):
        assert one.held and two.held
