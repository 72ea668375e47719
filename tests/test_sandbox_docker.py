"""The throwaway Docker engine for real: started here, images made here, nothing pulled.

A missing or broken engine fails these tests with dockerd's own log; they never skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import APIError, NotFound
from docker.models.images import Image

from safehold.errors import ToolError
from safehold.sandbox.dockerd import DEAD_PROXY, SandboxDockerd
from safehold.sandbox.images import DEFAULT_TAG, ROOTFS_LABEL, busybox_rootfs, ensure_busybox_image

pytestmark = pytest.mark.service


def start_engine() -> SandboxDockerd:
    engine = SandboxDockerd()
    try:
        engine.start()
    except ToolError as exc:
        failure = str(exc)
    else:
        return engine
    engine.remove()
    pytest.fail(f"the sandbox Docker engine did not start: {failure}", pytrace=False)


# engine, client and image: the session fixtures in conftest.py


def test_engine_listens_on_its_own_unix_socket_only(engine: SandboxDockerd) -> None:
    assert engine.base_url == f"unix://{engine.root / 'docker.sock'}"
    assert engine.pid is not None
    with contextlib.closing(engine.client()) as api:
        assert api.ping()
        info = api.info()
    assert info["Driver"] == "vfs"
    assert info["DockerRootDir"] == str(engine.data_root)
    assert listening_tcp_inodes() & socket_inodes(engine.pid) == set()


def test_busybox_image_is_built_here_and_reused(client: docker.DockerClient, image: Image) -> None:
    assert DEFAULT_TAG in image.tags
    assert image.labels[ROOTFS_LABEL]
    assert ensure_busybox_image(client).id == image.id
    # The rootfs tar is reproducible, which is what makes the label a reliable cache key.
    assert busybox_rootfs() == busybox_rootfs()


def test_container_writes_a_named_volume_another_reads_it(
    client: docker.DockerClient, image: Image
) -> None:
    volume = client.volumes.create(name=f"safehold-test-{secrets.token_hex(4)}")
    mount = {volume.name: {"bind": "/data", "mode": "rw"}}
    try:
        writer = client.containers.run(
            image,
            ["sh", "-c", "echo hi > /data/x && mkdir /data/sub && echo there > /data/sub/y"],
            volumes=mount,
            network_mode="none",
            detach=True,
        )
        try:
            assert writer.wait(timeout=60)["StatusCode"] == 0, writer.logs()
        finally:
            writer.remove(force=True)

        reader = client.containers.run(
            image,
            ["cat", "/data/x", "/data/sub/y"],
            volumes=mount,
            network_mode="none",
            detach=True,
        )
        try:
            assert reader.wait(timeout=60)["StatusCode"] == 0, reader.logs()
            assert reader.logs(stdout=True, stderr=False) == b"hi\nthere\n"
        finally:
            reader.remove(force=True)
        assert client.containers.list(all=True) == []
    finally:
        volume.remove(force=True)
    with pytest.raises(NotFound):
        client.volumes.get(volume.name)


def test_only_the_local_image_exists(client: docker.DockerClient, image: Image) -> None:
    tags = sorted(tag for listed in client.images.list(all=True) for tag in listed.tags)
    assert tags == [DEFAULT_TAG]
    assert [listed.id for listed in client.images.list(all=True)] == [image.id]


def test_registry_is_out_of_reach(client: docker.DockerClient, image: Image) -> None:
    """An accidental pull fails at once on the engine's dead proxy; nothing leaves the machine."""
    started = time.monotonic()
    with pytest.raises(APIError, match=re.escape(DEAD_PROXY.removeprefix("http://"))):
        client.images.pull("safehold-never-pulled", tag="latest")
    assert time.monotonic() - started < 30
    assert [listed.id for listed in client.images.list(all=True)] == [image.id]


@pytest.fixture
def fresh_engine() -> Iterator[SandboxDockerd]:
    """An engine of the test's own, for what would disturb the shared one."""
    started = start_engine()
    try:
        yield started
    finally:
        started.remove()


def test_a_stale_image_is_replaced_and_dropped(fresh_engine: SandboxDockerd) -> None:
    with contextlib.closing(fresh_engine.client()) as api:
        repository, tag = DEFAULT_TAG.split(":")
        api.api.import_image_from_data(
            busybox_rootfs(), repository, tag, changes=[f"LABEL {ROOTFS_LABEL}=stale"]
        )
        stale = api.images.get(DEFAULT_TAG)
        fresh = ensure_busybox_image(api)
        assert fresh.id != stale.id
        assert fresh.labels[ROOTFS_LABEL] == hashlib.sha256(busybox_rootfs()).hexdigest()
        assert [listed.id for listed in api.images.list(all=True)] == [fresh.id]


def test_remove_leaves_nothing_behind() -> None:
    engine = start_engine()
    try:
        with contextlib.closing(engine.client()) as api:
            running = api.containers.run(
                ensure_busybox_image(api), ["sleep", "600"], network_mode="none", detach=True
            )
            running.reload()
            container_pid = int(running.attrs["State"]["Pid"])
        pids = [engine.pid, engine.containerd_pid, container_pid]
        assert all(pid is not None and alive(pid) for pid in pids)
    finally:
        engine.remove()
    assert not any(alive(pid) for pid in pids if pid is not None)
    assert not engine.root.exists()
    assert not any(str(engine.root) in line for line in mountinfo())
    assert list(Path("/sys/fs/cgroup").glob(f"*/{engine.cgroup_parent}")) == []


def listening_tcp_inodes() -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1]
    except OSError:
        return False
    return not state.startswith("Z")


def mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()
