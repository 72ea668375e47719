"""A throwaway Docker engine on a private unix socket, for the tests and the demo.

Everything it owns lives under one fresh folder (data root, exec root, pidfile, socket, log), it
listens on no TCP port, touches no iptables and no bridge, and cannot reach a registry. Only the
processes it started are ever stopped, by PID; then the folder is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import docker
from docker.errors import DockerException

from .. import _proc
from ..errors import ToolError

INSTALL_HINT = (
    "install Docker's engine (Debian/Ubuntu: apt-get install docker.io), or run "
    "scripts/install-deps.sh"
)
# Any registry request goes through this proxy, and nothing listens there (port 9 is "discard"):
# an accidental pull fails at once instead of leaving the machine or hanging on DNS.
DEAD_PROXY = "http://127.0.0.1:9"
# sun_path is 108 bytes; the deepest socket dockerd creates is its containerd's ttrpc socket.
MAX_SOCKET_PATH = 107
CGROUP_ROOT = Path("/sys/fs/cgroup")
MNT_DETACH = 2
SBIN_FOLDERS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class SandboxDockerd:
    """``with SandboxDockerd() as engine: engine.client()`` — a running engine, removed after."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        storage_driver: str = "vfs",
        start_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="safehold-dockerd-"))
        self.socket = self.root / "docker.sock"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self.storage_driver = storage_driver
        self.start_timeout = start_timeout
        # A cgroup parent of its own, so its containers never share /docker with another engine
        # and can be found (and their cgroups removed) by this object alone.
        self.cgroup_parent = f"safehold-dockerd-{secrets.token_hex(4)}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._containerd_pid: int | None = None

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def containerd_socket(self) -> Path:
        return self.exec_root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.exec_root / "containerd" / "containerd.toml"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def containerd_pid(self) -> int | None:
        return self._containerd_pid

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.base_url, timeout=timeout)

    def argv(self) -> list[str]:
        dockerd = shutil.which("dockerd", path=_search_path())
        if dockerd is None:
            raise ToolError("dockerd is not installed or not on PATH", hint=INSTALL_HINT)
        return [
            dockerd,
            # A config file of its own: /etc/docker/daemon.json must not change the sandbox.
            f"--config-file={self.root / 'daemon.json'}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host=unix://{self.socket}",
            # vfs (the default) works on any filesystem, overlayfs included, at the price of a full
            # copy per layer and per container; overlay2 is much faster where the kernel allows.
            f"--storage-driver={self.storage_driver}",
            # No network plumbing at all: containers run with network "none".
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--cgroup-parent=/{self.cgroup_parent}",
            "--shutdown-timeout=5",
            "--log-level=warn",
        ]

    def config(self, dockerd: str) -> dict[str, str]:
        """daemon.json: keys that have no command-line flag."""
        if engine_version(dockerd) < (23,):
            # Before 23.0 the engine writes an identity key to /etc/docker/key.json unless told
            # otherwise, and only the config file can tell it (23.0 dropped key and setting alike).
            return {"deprecated-key-path": str(self.root / "key.json")}
        return {}

    def start(self) -> None:
        if self._proc is not None:
            raise ToolError("the sandbox Docker engine is already running")
        if os.geteuid() != 0:
            raise ToolError(
                "the sandbox Docker engine needs root",
                hint="run the tests as root (rootless dockerd is not supported by the sandbox)",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        deepest = self.exec_root / "containerd" / "containerd.sock.ttrpc"
        if len(str(deepest)) > MAX_SOCKET_PATH:
            raise ToolError(
                f"sandbox folder {self.root} is too deep for unix sockets",
                hint="set TMPDIR to a short path such as /tmp",
            )
        if self.socket.exists() or self.pidfile.exists():
            raise ToolError(
                f"{self.root} already holds an engine's socket or pidfile",
                hint="give each SandboxDockerd a folder of its own (the default is a fresh one)",
            )
        argv = self.argv()
        (self.root / "daemon.json").write_text(json.dumps(self.config(argv[0])) + "\n")
        env = _proc.child_env(
            {
                # dockerd looks runc and containerd up on PATH; Debian puts runc in /usr/sbin.
                "PATH": _search_path(),
                "HTTP_PROXY": DEAD_PROXY,
                "HTTPS_PROXY": DEAD_PROXY,
                "http_proxy": DEAD_PROXY,
                "https_proxy": DEAD_PROXY,
                "NO_PROXY": "",
                "no_proxy": "",
            }
        )
        with self.log.open("ab") as log:
            # A session of its own: a Ctrl-C aimed at pytest must not kill the engine before
            # stop() has removed its containers.
            self._proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._containerd_pid = self._read_containerd_pid()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no socket yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ToolError(
                    f"dockerd exited with status {self._proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            # The pidfile names the engine that owns the folder: ours, not a leftover.
            if self.socket.exists() and _read_pid(self.pidfile) == self._proc.pid:
                try:
                    with contextlib.closing(self.client(timeout=10)) as client:
                        if client.ping():
                            return
                except (DockerException, OSError) as exc:
                    last_error = str(exc)
            time.sleep(0.05)
        raise ToolError(
            f"dockerd did not answer on {self.socket} within {self.start_timeout:.0f}s "
            f"({last_error}):\n" + self.log_tail()
        )

    def _read_containerd_pid(self) -> int | None:
        """The containerd that dockerd launched for itself (none if --containerd was given)."""
        return _read_pid(self.exec_root / "containerd" / "containerd.pid")

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Containers that ignore SIGTERM (a shell as PID 1) would hold dockerd's shutdown for
            # --shutdown-timeout each; the sandbox keeps nothing, so kill them outright.
            with (
                contextlib.suppress(DockerException, OSError),
                contextlib.closing(self.client(timeout=10)) as client,
            ):
                for container in client.containers.list():
                    with contextlib.suppress(DockerException, OSError):
                        container.kill()
        _proc.stop(proc, grace=30.0)
        # Normally dockerd stops its containerd itself; after a SIGKILL it cannot.
        containerd = self._containerd_pid
        if containerd is not None and _argv_has(containerd, str(self.containerd_config)):
            _terminate(containerd)
        self._kill_leftovers()
        self._unmount_leftovers()
        self._remove_cgroups()

    def remove(self) -> None:
        self.stop()
        self._unmount_leftovers()
        remaining = _mounts_under(self.root)
        if remaining:
            # rmtree crosses mount points: never let it delete through a bind mount.
            raise ToolError(
                f"sandbox folder {self.root} still has mounts, left in place: "
                + ", ".join(remaining),
                hint="unmount them (umount -l PATH), then delete the folder",
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """Shims and container processes left behind only if dockerd died without cleaning up.

        A shim is ours if its argv names our containerd's socket; a container process if it sits
        in our own cgroup parent. Both are then stopped by PID, never by program name.
        """
        pids = {
            pid for pid in _all_pids() if _argv_has(pid, "-address", str(self.containerd_socket))
        }
        for directory in self._cgroup_dirs():
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(line) for line in procs.read_text().split())
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            _wait_gone(pid, timeout=5.0)

    def _unmount_leftovers(self) -> None:
        """dockerd unmounts its data root and volumes when it stops cleanly; after a crash it
        cannot, and rmtree must not walk into (or fail on) a live mount."""
        mounts = _mounts_under(self.root)
        if not mounts:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        for mountpoint in sorted(mounts, key=len, reverse=True):
            libc.umount2(os.fsencode(mountpoint), MNT_DETACH)

    def _cgroup_dirs(self) -> list[Path]:
        candidates = [
            CGROUP_ROOT / self.cgroup_parent,
            *CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"),
        ]
        return [path for path in candidates if path.is_dir()]

    def _remove_cgroups(self) -> None:
        for directory in self._cgroup_dirs():
            # cgroup folders are removed with rmdir only, children first; a busy one stays.
            children = sorted(
                (path for path in directory.rglob("*") if path.is_dir()),
                key=lambda path: len(path.parts),
                reverse=True,
            )
            for path in [*children, directory]:
                with contextlib.suppress(OSError):
                    path.rmdir()

    def __enter__(self) -> SandboxDockerd:
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails; the folder must not outlive us.
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def engine_version(dockerd: str) -> tuple[int, ...]:
    """(20, 10, 24) from "Docker version 20.10.24+dfsg1, build 5d6db84"."""
    result = _proc.run([dockerd, "--version"], timeout=30)
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise ToolError(f"cannot tell the version of {dockerd}: {result.stdout}{result.stderr}")
    return tuple(int(part) for part in match.groups())


def _search_path() -> str:
    """PATH plus the sbin folders a non-login root shell may lack."""
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    extra = [folder for folder in SBIN_FOLDERS if folder not in folders]
    return os.pathsep.join([*folders, *extra])


def _read_pid(pidfile: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pidfile.read_text().strip())
    return None


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _argv_has(pid: int, *words: str) -> bool:
    """True if the process's argv holds ``words`` in a row: a guard against a recycled PID."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    wanted = [os.fsencode(word) for word in words]
    return any(argv[i : i + len(wanted)] == wanted for i in range(len(argv)))


def _terminate(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout=grace):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, timeout=5.0)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie of ours (reaped by init later) counts as gone.
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        time.sleep(0.05)
    return False


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mountpoint = _unescape(line.split(" ")[4])
            if mountpoint == str(folder) or mountpoint.startswith(prefix):
                found.append(mountpoint)
    return found


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field
