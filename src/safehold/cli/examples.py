"""The examples at the end of every ``--help``: two or three command lines per command.

They live here, in one table, rather than in each command's docstring: the commands are thin
files that change often, and one table is easy to keep whole (``tests/test_help_examples.py``
parses every line against the real command tree, so a renamed option fails there). ``attach``
puts them into a command's ``epilog`` when the lazy group loads it.
"""

from __future__ import annotations

import click

Example = tuple[str, str]  # (command line, what it does)

EXAMPLES: dict[str, tuple[Example, ...]] = {
    "": (  # safehold --help: where a newcomer starts
        ("safehold init --dry-run", "the config this host's compose application needs"),
        ("safehold backup --all", "the database and every configured volume, as one set"),
        ("safehold restore --database latest --target-db app_copy", "restore beside the live one"),
    ),
    "backup": (
        ("safehold backup", "back up the database now"),
        ("safehold backup --all", "full system: the database and every configured volume"),
        ("safehold backup --volume 'user-*' --json", "every volume named user-*; manifests"),
    ),
    "cat": (
        ("safehold cat latest | pg_restore --list", "the newest dump's table of contents"),
        ("safehold cat --volume user-data latest | tar -tzv", "the newest volume backup's files"),
    ),
    "completion": (
        (
            "safehold completion bash > ~/.local/share/bash-completion/completions/safehold",
            "install bash completion for your user",
        ),
        (
            "safehold completion zsh > ~/.zfunc/_safehold",
            "zsh (with ~/.zfunc on fpath)",
        ),
        (
            "safehold completion fish > ~/.config/fish/completions/safehold.fish",
            "fish",
        ),
    ),
    "config": (
        ("safehold config", "the effective settings and where each came from"),
        ("safehold config --keys", "every key with its environment names and default"),
        ("safehold config --json --config /opt/app/safehold.toml", "another file's, as JSON"),
    ),
    "copy": (
        ("safehold copy --to offsite", "every good backup the location lacks"),
        ("safehold copy --to offsite --latest", "only the newest backup of each target"),
        ("safehold copy --to archive --representative monthly", "month-end representatives"),
    ),
    "daemon": (
        ("safehold daemon", "run the schedule in the foreground (containers without cron)"),
        ("safehold daemon --metrics-port 9187", "and serve Prometheus metrics on 127.0.0.1"),
    ),
    "demo": (
        ("safehold demo", "back up, restore and drill a throwaway sandbox"),
        ("safehold demo --workdir /tmp/demo --keep", "keep its backups to look at"),
    ),
    "doctor": (
        ("safehold doctor", "check the config, tools, server, Docker and repository"),
        ("safehold doctor --json", "the same checks as JSON"),
    ),
    "drill": (
        ("safehold drill", "restore the newest backup of each target into scratch space"),
        ("safehold drill --latest --sandbox", "the same, into a throwaway local cluster"),
        ("safehold drill --full-system --set latest", "rehearse a whole-system recovery"),
    ),
    "init": (
        ("safehold init --dry-run", "print the safehold.toml init would write"),
        ("safehold init --project shop", "write it for the compose project 'shop'"),
        ("safehold init --output /opt/app/safehold.toml --force", "replace an existing file"),
    ),
    "keygen": (
        ("safehold keygen -o ~/safehold-identity.txt", "a key pair; prints the public key"),
        ("safehold keygen --json", "the public key and the identity's path as JSON"),
    ),
    "list": (
        ("safehold list", "the backups in BACKUP_DIR, newest first"),
        ("safehold list --sets", "the full-system sets"),
        ("safehold list --from offsite --json", "what a location holds, as JSON"),
    ),
    "pin": (
        ("safehold pin", "list the pins"),
        ("safehold pin db_backup_20241201_120000.sql --note 'before v2'", "keep it for good"),
        ("safehold pin db_backup_latest.sql --keep-until 2025-01-31", "keep it through Jan 31"),
    ),
    "pitr": (
        ("safehold pitr setup --apply", "turn on WAL archiving into BACKUP_DIR"),
        ("safehold pitr check --verify", "is the WAL archive continuous?"),
    ),
    "pitr base-backup": (
        ("safehold pitr base-backup", "take a physical base backup"),
        ("safehold pitr base-backup --json", "and print its record"),
    ),
    "pitr check": (
        ("safehold pitr check", "WAL continuity from each base backup"),
        ("safehold pitr check --verify --json", "also check the base backups' sha256"),
    ),
    "pitr restore": (
        (
            "safehold pitr restore --to-time '2024-12-01 12:00' --target-dir /srv/pg-restored",
            "a new cluster as it was at noon UTC",
        ),
        (
            "safehold pitr restore --to-end --target-dir /var/lib/postgresql/15/main --force",
            "the stopped cluster, to the end of the archive",
        ),
    ),
    "pitr setup": (
        ("safehold pitr setup", "print the server settings WAL archiving needs"),
        ("safehold pitr setup --apply", "set them with ALTER SYSTEM"),
    ),
    "prune": (
        ("safehold prune --dry-run", "what retention would keep and remove, and why"),
        ("safehold prune", "remove what retention does not keep"),
        ("safehold prune --json", "the decisions as JSON"),
    ),
    "report": (
        ("safehold report --html report.html", "a one-page report to open in a browser"),
        ("safehold report --days 90 --json", "three months of data as JSON"),
        ("safehold report --fleet --location offsite --html fleet.html", "every host, one page"),
    ),
    "restore": (
        (
            "safehold restore --database db_backup_20241201_120000.sql",
            "the database from this backup (staged, checked, swapped in)",
        ),
        ("safehold restore --volume user-data:latest", "a volume from its newest backup"),
        ("safehold restore --all --dry-run", "the whole-system runbook's plan, nothing done"),
    ),
    "schedule": (
        ("safehold schedule show", "the jobs, when they run next, and the RPO each gives"),
        ("safehold schedule install --dry-run", "the crontab lines install would write"),
        ("safehold schedule install --systemd", "systemd timers instead of crontab lines"),
    ),
    "schedule install": (
        ("safehold schedule install --dry-run", "print the crontab lines, change nothing"),
        ("safehold schedule install", "write them into your crontab"),
        ("safehold schedule install --systemd", "a timer and a hardened service per job"),
    ),
    "schedule remove": (
        ("safehold schedule remove --dry-run", "the lines that would go"),
        ("safehold schedule remove", "take safehold's lines out of your crontab"),
        ("safehold schedule remove --systemd", "delete the units safehold wrote, no others"),
    ),
    "schedule show": (
        ("safehold schedule show", "the jobs and their next runs"),
        ("safehold schedule show --json", "the same as JSON"),
        ("safehold schedule show --systemd --user", "your user timers: installed, next runs"),
    ),
    "snapshots": (
        ("safehold snapshots list", "every snapshot in the chunk store"),
        ("safehold snapshots verify --read-data 10", "check the store, reading a tenth of it"),
    ),
    "snapshots copy": (
        ("safehold snapshots copy", "mirror the chunk store to every location"),
        ("safehold snapshots copy --to offsite --json", "to one location; JSON result"),
    ),
    "snapshots export": (
        ("safehold snapshots export 3f2a9c1d", "make a snapshot a backup in BACKUP_DIR"),
        ("safehold snapshots export 3f2a9c1d -o - | pg_restore --list", "stream its dump"),
    ),
    "snapshots list": (
        ("safehold snapshots list", "every snapshot, oldest first"),
        ("safehold snapshots list --target volume:user-data --json", "one target's, as JSON"),
    ),
    "snapshots ls": (
        ("safehold snapshots ls 3f2a9c1d", "the snapshot's top folder"),
        ("safehold snapshots ls 3f2a9c1d alice/photos -r", "everything below alice/photos"),
    ),
    "snapshots prune": (
        ("safehold snapshots prune --dry-run", "what retention would remove"),
        ("safehold snapshots prune", "remove it, then the packs nothing needs"),
    ),
    "snapshots restore": (
        ("safehold snapshots restore 3f2a9c1d --to /srv/restored", "into a new folder"),
        (
            "safehold snapshots restore 3f2a9c1d --to /tmp/one --include alice/notes.txt",
            "one file of it",
        ),
    ),
    "snapshots verify": (
        ("safehold snapshots verify", "check every snapshot's blobs are indexed and packed"),
        ("safehold snapshots verify --read-data 100 --json", "read everything; JSON result"),
    ),
    "status": (
        ("safehold status", "backups against the RPO/RTO; exit 0/1/2 like a monitoring plugin"),
        (
            "safehold status --metrics-file /var/lib/node_exporter/safehold.prom",
            "also write Prometheus metrics for node_exporter",
        ),
        ("safehold status --fleet --location offsite --json", "every host in the bucket"),
    ),
    "unpin": (
        ("safehold unpin db_backup_20241201_120000.sql", "let retention decide again"),
        ("safehold unpin 3f2a9c1d", "unpin a snapshot"),
    ),
    "verify": (
        ("safehold verify", "size and sha256 of the newest backup of each target"),
        ("safehold verify --level full db_backup_latest.sql", "read the newest dump all through"),
        ("safehold verify --all-backups --json", "every backup, oldest first, as JSON"),
    ),
    "wal-fetch": (
        (
            "safehold wal-fetch 000000010000000000000003 pg_wal/RECOVERYXLOG",
            "what restore_command = 'safehold wal-fetch %f %p' runs",
        ),
        (
            "safehold wal-fetch 00000002.history /tmp/00000002.history",
            "fetch a timeline history file by hand",
        ),
    ),
    "wal-push": (
        (
            "safehold wal-push pg_wal/000000010000000000000003",
            "what archive_command = 'safehold wal-push %p' runs",
        ),
        (
            "safehold wal-push --ahead 0 pg_wal/000000010000000000000003",
            "push only that segment",
        ),
    ),
}


def epilog(examples: tuple[Example, ...]) -> str:
    """The "Examples:" block; ``\\b`` keeps click from rewrapping it into one paragraph."""
    lines = ["\b", "Examples:"]
    for command, what in examples:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines)


def attach(command: click.Command, path: str) -> None:
    """Give ``command`` (and each subcommand of a group) its examples; calling it again changes
    nothing. A command's own epilog stays in front of the block."""
    examples = EXAMPLES.get(path)
    if examples is not None:
        block = epilog(examples)
        own = command.epilog or ""
        if block not in own:
            command.epilog = f"{own}\n\n{block}" if own else block
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            attach(sub, f"{path} {name}")
