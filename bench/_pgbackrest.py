"""pgBackRest as a bench baseline: a config file per repository, commands run as the server's
OS user (``nobody`` when we are root), so the archive_command and the bench share one repo."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path

from safehold import _proc
from safehold.sandbox import SandboxCluster
from safehold.sandbox.cluster import UNPRIVILEGED_USER

STANZA = "bench"
RUN_AS = UNPRIVILEGED_USER if os.geteuid() == 0 else None


def own(path: Path) -> Path:
    """Give ``path`` to the server's OS user (it writes the archives)."""
    if RUN_AS is not None:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def own_folder(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return own(path)


def shared_folder(prefix: str) -> Path:
    """A fresh folder in the system temp dir that the server's user can reach and write."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(folder, 0o700)
    return own(folder)


def run(argv: list[str], *, user: str | None = None, cwd: Path | None = None) -> str:
    """Run ``argv`` to the end; raise with its output when it fails."""
    proc = subprocess.run(
        argv,
        env=_proc.child_env(),
        user=user,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}{proc.stdout[-2000:]}"
        )
    return proc.stdout


class PgBackRest:
    """One repository (``folder/repo``) with its own config, log, lock and spool folders.
    ``asynchronous``: ``archive-async=y`` with ``process-max`` pushers, as pgBackRest's docs
    advise for busy servers; else one ``archive-push`` process per segment."""

    def __init__(
        self,
        cluster: SandboxCluster,
        folder: Path,
        *,
        asynchronous: bool = False,
        process_max: int = 2,
    ) -> None:
        self.folder = own_folder(folder)
        self.repo = folder / "repo"
        self.conf = folder / "pgbackrest.conf"
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.repo}\n"
            f"process-max={process_max}\n"
            f"archive-async={'y' if asynchronous else 'n'}\n"
            "compress-type=zst\n"
            "compress-level=3\n"
            f"log-path={folder / 'log'}\n"
            f"lock-path={folder / 'lock'}\n"
            f"spool-path={folder / 'spool'}\n"
            "log-level-console=warn\n"
            "log-level-file=info\n"
            f"\n[{STANZA}]\n"
            f"pg1-path={cluster.data}\n"
            f"pg1-port={cluster.port}\n"
            f"pg1-socket-path={cluster.root}\n"
            f"pg1-user={cluster.target.user}\n"
        )
        own(self.conf)

    def archive_command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"

    def __call__(self, *args: str) -> str:
        argv = ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args]
        return run(argv, user=RUN_AS, cwd=self.folder)

    def get(self, name: str, dest: Path) -> None:
        """``archive-get`` of one file, synchronously (off the clock, to check content)."""
        self("--no-archive-async", "archive-get", name, str(dest))
