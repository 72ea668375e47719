"""Two hosts back up into one bucket at the same time while a third prunes it (a real
SeaweedFS on loopback, the real command in child processes): backups wait for prune's lock
instead of failing, prune removes what retention drops while they run, and afterwards every
snapshot listed restores to exactly the folder it was taken of."""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

from safehold.sandbox.s3server import SandboxS3
from safehold.storage import LocalStorage

from .conftest import CliRunner
from .test_snapshots_cli import _keys, _ok, keep_last
from .test_snapshots_locations import _config, s3_env
from .tree_support import MiB, Tree, snapshot

ROUNDS = 4
KEY = Path(".safehold/keys/chunk-id.key")
IDENTITY = "SAFEHOLD_ENCRYPTION_IDENTITY_FILE"


def _change(folder: Path, host: str, round_: int) -> None:
    """A new file each round, an old one gone, one shared file rewritten in place."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{host}-{round_}")
    (folder / f"r{round_}.bin").write_bytes(rng.randbytes(3 * MiB + round_))
    (folder / f"r{round_ - 2}.bin").unlink(missing_ok=True)
    (folder / "shared.txt").write_text(f"{host} round {round_}\n" * 1000)


def test_two_hosts_back_up_into_one_bucket_while_a_third_prunes(
    run_cli: CliRunner, repo: LocalStorage, tmp_path: Path, s3: SandboxS3
) -> None:
    bucket = s3.bucket()
    config = _config(tmp_path / "safehold.toml", s3, {"bucket": bucket}, "bucket")
    base = {
        **s3_env(s3, config),
        **keep_last(2),
        "SAFEHOLD_LOCK_TIMEOUT": "120",
    }
    writer, reader = _keys(run_cli, tmp_path)
    homes = {name: tmp_path / name for name in ("host-a", "host-b", "host-c")}
    env = {name: {**base, **writer, "BACKUP_DIR": str(home)} for name, home in homes.items()}
    # Host A makes the store; the others get its id key (what an operator copies once).
    _change(homes["host-a"] / "data", "host-a", 0)
    first = run_cli("backup", "--path", str(homes["host-a"] / "data"), "--json", env=env["host-a"])
    taken: dict[str, Tree] = {json.loads(_ok(first).stdout)[0]["snapshot"]: _tree(homes["host-a"])}
    for name in ("host-b", "host-c"):
        (homes[name] / KEY.parent).mkdir(parents=True, mode=0o700)
        shutil.copy2(homes["host-a"] / KEY, homes[name] / KEY)

    failures: list[str] = []
    done = threading.Event()

    def host(name: str) -> None:
        folder = homes[name] / "data"
        for round_ in range(1, ROUNDS + 1):
            _change(folder, name, round_)
            made = run_cli("backup", "--path", str(folder), "--json", env=env[name])
            if made.returncode != 0:
                failures.append(f"{name} round {round_}: {made.stderr}")
                return
            taken[json.loads(made.stdout)[0]["snapshot"]] = _tree(homes[name])

    prunes: list[int] = []  # per prune run: snapshots forgotten + packs removed

    def pruner() -> None:
        while not done.is_set():
            ran = run_cli("snapshots", "prune", "--grace-minutes", "0", "--json", env=env["host-c"])
            if ran.returncode != 0:
                failures.append(f"prune: {ran.stderr}")
                return
            report = json.loads(ran.stdout)
            prunes.append(len(report["forgotten"]) + len(report["store"]["removed_packs"]))

    hosts = [threading.Thread(target=host, args=(n,)) for n in ("host-a", "host-b")]
    prune = threading.Thread(target=pruner)
    for thread in (*hosts, prune):
        thread.start()
    for thread in hosts:
        thread.join()
    done.set()
    prune.join()
    assert not failures, failures
    assert sum(prunes) > 0, f"no prune removed anything while the hosts backed up: {prunes}"
    _ok(run_cli("snapshots", "prune", "--grace-minutes", "0", env=env["host-c"]))

    listed = json.loads(_ok(run_cli("snapshots", "list", "--json", env=env["host-c"])).stdout)
    assert sorted(s["target"] for s in listed) == ["volume:data"] * 2
    # Retention judged by target: both hosts back up "data", so the two newest survive.
    newest = sorted(taken, key=lambda snap: snap.split("-")[0])[-2:]
    assert sorted(s["snapshot"] for s in listed) == sorted(newest)
    restorer = {**env["host-c"], "SAFEHOLD_ENCRYPTION_IDENTITY_FILE": reader[IDENTITY]}
    for item in listed:
        dest = tmp_path / "restored" / item["snapshot"]
        _ok(run_cli("snapshots", "restore", item["snapshot"], "--to", str(dest), env=restorer))
        assert snapshot(dest, exact=True) == taken[item["snapshot"]]
    verified = run_cli("snapshots", "verify", "--read-data", "100", "--json", env=restorer)
    checked = json.loads(_ok(verified).stdout)
    assert checked["ok"] and checked["snapshots"] == 2


def _tree(home: Path) -> Tree:
    return snapshot(home / "data", exact=True)
