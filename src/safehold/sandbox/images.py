"""Test images made here from Debian's static busybox: nothing is ever pulled from a registry.

The rootfs is a tar built in memory (busybox, its applets as symlinks, /etc/passwd, /tmp) and
handed to the engine's import endpoint, which creates an image from a tar without any registry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
from pathlib import Path

import docker
from docker.errors import APIError, ImageNotFound
from docker.models.images import Image
from docker.utils import parse_repository_tag

from .. import _proc
from ..errors import ToolError

BUSYBOX = Path("/bin/busybox")
DEFAULT_TAG = "safehold-busybox:latest"
# The image records which rootfs it was made from, so a rebuilt busybox makes a new image and
# an unchanged one is reused.
ROOTFS_LABEL = "org.safehold.rootfs-sha256"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = "apt-get install busybox-static, or run scripts/install-deps.sh"

# dev, proc and sys are mount points the runtime expects to find.
FOLDERS = ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin", "usr/sbin")
ACCOUNTS = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def ensure_busybox_image(
    client: docker.DockerClient, tag: str = DEFAULT_TAG, *, busybox: Path = BUSYBOX
) -> Image:
    """Return the image ``tag``, importing it from a fresh busybox rootfs only if needed."""
    rootfs = busybox_rootfs(busybox)
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
        changes=[f"LABEL {ROOTFS_LABEL}={digest}", f"ENV PATH={PATH}", 'CMD ["sh"]'],
    )
    image = client.images.get(tag)
    if stale is not None and stale.id != image.id:
        # The old image lost its tag; drop it unless a container still uses it.
        with contextlib.suppress(APIError):
            client.images.remove(str(stale.id))
    return image


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
