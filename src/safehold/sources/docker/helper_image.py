"""Helper images and the containers made from them; nothing is ever pulled from a registry.

A rootfs is a tar built in memory and handed to the engine's import endpoint, which makes an
image from a tar without any registry; that works for a remote engine too. Two are made:

- an empty one, for helpers that are only created (never started) so that the engine's
  archive endpoints can read or write the volume they mount: no binary, so any architecture;
- a busybox one (Debian's static busybox, its applets as symlinks, /etc/passwd, /tmp), for the
  few shell commands the engine's API has no endpoint for (renames inside a volume). Its
  binary must suit the engine's architecture.

Each image records the sha256 of its rootfs in a label, so an unchanged rootfs is reused and a
changed one replaces the image. Docker's own exceptions pass through: callers decide how to
report them. Helper containers carry the label org.safehold.helper=true and are removed when
the block that uses them ends, however it ends short of a kill (a killed swap's helpers are
removed by the next command's recovery).

A volume is restored through these helpers by :mod:`.helper_swap`: the archive is unpacked into
a hidden staging folder inside the volume, then the busybox helper swaps the volume's entries
for the staged ones by renames. That swap is journalled in the repository and marks its commit
point inside the volume, so a kill of safehold, the helper or the engine is undone or finished
by the next command (:mod:`.recovery_volume_api`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import secrets
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import docker
import docker.errors
import requests
from docker.errors import APIError, ImageNotFound
from docker.models.containers import Container
from docker.models.images import Image
from docker.types import Mount
from docker.utils import parse_repository_tag

from ... import _proc
from ...errors import ToolError
from ...model import Event, EventSink

BUSYBOX = Path("/bin/busybox")
BUSYBOX_TAG = "safehold-helper:busybox"
EMPTY_TAG = "safehold-helper:empty"
ROOTFS_LABEL = "org.safehold.rootfs-sha256"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install busybox-static, or run scripts/install-deps.sh"

# dev, proc and sys are mount points the runtime expects to find.
FOLDERS = ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin", "usr/sbin")
ACCOUNTS = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
HELPER_LABEL = "org.safehold.helper"
MOUNT = "/v"  # where a helper mounts its volume (the swap scripts say /v too)
DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException)


@contextlib.contextmanager
def helper_container(
    client: docker.DockerClient,
    image: Image,
    volume: str,
    command: list[str],
    events: EventSink,
    *,
    read_only: bool,
    labels: dict[str, str] | None = None,
) -> Iterator[Container]:
    """A created (not started) helper mounting ``volume`` at /v, removed after; ``labels``
    besides HELPER_LABEL."""
    helper = client.containers.create(
        str(image.id),
        command,
        name=f"safehold-helper-{secrets.token_hex(6)}",
        labels={**(labels or {}), HELPER_LABEL: "true"},
        network_mode="none",
        # no_copy: an empty volume must not be seeded with what the image holds at /v.
        mounts=[Mount(MOUNT, volume, type="volume", read_only=read_only, no_copy=True)],
    )
    try:
        yield helper
    finally:
        try:
            helper.remove(force=True)
        except DOCKER_ERRORS as exc:
            events(
                Event(
                    "volume",
                    f"could not remove helper container {helper.name}: {exc}; "
                    f"remove it with 'docker rm -f {helper.name}'",
                    "warning",
                )
            )


def run_helper(helper: Container) -> tuple[int, str]:
    """Start the helper and wait for it: its exit status and the tail of its output."""
    helper.start()
    try:
        status = int(helper.wait()["StatusCode"])
    except BaseException:
        # Removing it while it runs would cut its work short (a swap half done): let it end.
        with contextlib.suppress(*DOCKER_ERRORS):
            helper.wait()
        raise
    log = helper.logs(stdout=True, stderr=True).decode("utf-8", "replace").strip()
    return status, " | ".join(log.splitlines()[-3:]) or "no output"


def ensure_image(
    client: docker.DockerClient, tag: str, rootfs: bytes, changes: Sequence[str] = ()
) -> Image:
    """Return the image ``tag`` made from ``rootfs``, importing it only if it is missing or was
    made from another rootfs."""
    digest = hashlib.sha256(rootfs).hexdigest()
    stale: Image | None = None
    try:
        stale = client.images.get(tag)
    except ImageNotFound:
        pass
    else:
        if stale.labels.get(ROOTFS_LABEL) == digest:
            return stale
    repository, version = parse_repository_tag(tag)
    client.api.import_image_from_data(
        rootfs,
        repository=repository,
        tag=version or "latest",
        changes=[f"LABEL {ROOTFS_LABEL}={digest}", *changes],
    )
    image = client.images.get(tag)
    if stale is not None and stale.id != image.id:
        # The old image lost its tag; drop it unless a container still uses it.
        with contextlib.suppress(APIError):
            client.images.remove(str(stale.id))
    return image


def ensure_busybox_image(
    client: docker.DockerClient, tag: str = BUSYBOX_TAG, *, busybox: Path = BUSYBOX
) -> Image:
    return ensure_image(client, tag, busybox_rootfs(busybox), [f"ENV PATH={PATH}", 'CMD ["sh"]'])


def ensure_empty_image(client: docker.DockerClient, tag: str = EMPTY_TAG) -> Image:
    """An image with nothing in it; its containers can be created, never run."""
    return ensure_image(client, tag, empty_rootfs())


def empty_rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT):
        pass  # the engine takes an archive with no member at all
    return buffer.getvalue()


def busybox_rootfs(busybox: Path = BUSYBOX) -> bytes:
    """A reproducible tar of a minimal root filesystem (same input, same bytes)."""
    try:
        binary = busybox.read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read {busybox}: {exc.strerror}", hint=INSTALL_HINT) from exc
    if not is_static_elf(binary):
        # A dynamic busybox (package "busybox") would find no libc in the image.
        raise ToolError(f"{busybox} is not a static executable", hint=INSTALL_HINT)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in FOLDERS:
            tar.addfile(_entry(folder, tarfile.DIRTYPE, 0o755))
        tar.addfile(_entry("tmp", tarfile.DIRTYPE, 0o1777))
        program = _entry("bin/busybox", tarfile.REGTYPE, 0o755, size=len(binary))
        tar.addfile(program, io.BytesIO(binary))
        for applet in applets(busybox):
            tar.addfile(_entry(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox"))
        for name, text in (("etc/passwd", ACCOUNTS), ("etc/group", GROUP)):
            data = text.encode()
            tar.addfile(_entry(name, tarfile.REGTYPE, 0o644, size=len(data)), io.BytesIO(data))
    return buffer.getvalue()


def applets(busybox: Path = BUSYBOX) -> list[str]:
    """Every applet at its usual place (bin/sh, usr/bin/tar, ...), as busybox itself lists them."""
    result = _proc.run([str(busybox), "--list-full"], timeout=30)
    if result.returncode != 0:
        raise ToolError(f"{busybox} --list-full failed: {result.stderr.strip()}", hint=INSTALL_HINT)
    # A bare name (linuxrc) is an initramfs entry point, not a command.
    names = {line.strip() for line in result.stdout.splitlines() if "/" in line}
    names.discard("bin/busybox")
    return sorted(names)


def is_static_elf(binary: bytes) -> bool:
    """An ELF64 little-endian executable with no PT_INTERP segment needs no dynamic loader."""
    if binary[:4] != b"\x7fELF" or binary[4] != 2 or binary[5] != 1:
        return False
    phoff = int.from_bytes(binary[0x20:0x28], "little")
    phentsize = int.from_bytes(binary[0x36:0x38], "little")
    phnum = int.from_bytes(binary[0x38:0x3A], "little")
    for index in range(phnum):
        start = phoff + index * phentsize
        if int.from_bytes(binary[start : start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def _entry(name: str, kind: bytes, mode: int, *, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    # Fixed owner and time keep the tar, and so its digest, the same from run to run.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info
