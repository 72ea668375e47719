"""A scratch PostgreSQL cluster: initdb + pg_ctl on a free loopback port (as root, the server
runs as an unprivileged user). Drills restore into one (``drill --sandbox``), physical restores
find their server binaries and ports here; the test and demo sandbox is this same cluster
(``safehold.sandbox.ScratchCluster``).

Only the postmaster this object started is ever stopped (``pg_ctl stop`` on its own data folder).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .. import _proc
from ..errors import ToolError
from .postgres import PgTarget

UNPRIVILEGED_USER = "nobody"
SUPERUSER = "postgres"


def server_bin_dir() -> Path:
    """Debian keeps initdb/pg_ctl out of PATH; find the newest installed server."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not candidates:
        raise ToolError(
            "no PostgreSQL server found for the sandbox",
            hint="install it (Debian/Ubuntu: apt-get install postgresql), or run "
            "scripts/install-deps.sh",
        )
    return Path(candidates[-1]).parent


def _version_key(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScratchCluster:
    """``with ScratchCluster(folder) as pg: pg.target`` — a running server, stopped afterwards."""

    def __init__(
        self, root: Path | None = None, *, port: int | None = None, fsync: bool = False
    ) -> None:
        # The server user must be able to reach its folder; a fresh folder in the system temp
        # dir (sticky, world-traversable) always is, unlike pytest's or mkdtemp's 0700 parents.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="safehold-pg-"))
        self.data = self.root / "data"
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.fsync = fsync
        self.bin_dir = server_bin_dir()
        self._user = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        self._started = False

    @property
    def target(self) -> PgTarget:
        return PgTarget(
            host="127.0.0.1",
            port=self.port,
            dbname="postgres",
            user=SUPERUSER,
            password=self.password,
        )

    def start(self) -> PgTarget:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # noqa: S103 - the server user must reach its data folder
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        os.chmod(pwfile, 0o600)
        if self._user is not None:
            os.chown(pwfile, pwd.getpwnam(self._user).pw_uid, -1)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        finally:
            pwfile.unlink()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            f"-c fsync={'on' if self.fsync else 'off'} -c full_page_writes=off "
            "-c max_wal_size=4GB -c shared_buffers=256MB"
        )
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")
        self._started = True
        return self.target

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        argv = [str(self.bin_dir / tool), *args]
        proc = subprocess.run(
            argv,
            env=_proc.child_env(),
            user=self._user,
            capture_output=True,
            check=False,
            cwd=self.root,
        )
        if check and proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip()
            log = self.root / "server.log"
            if log.exists():
                with contextlib.suppress(OSError):
                    detail += "\n" + log.read_text(errors="replace")[-2000:]
            raise ToolError(f"sandbox {tool} failed: {detail}")

    def __enter__(self) -> ScratchCluster:
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
