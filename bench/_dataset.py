"""The two benchmark databases: a realistic mixed one built server-side, and pgbench's.

"bench_real" is built to resist compression the way application data does: random uuids and
md5 hex, integers, timestamps, jsonb, and free text made of a Zipf-like pseudo-word vocabulary
(natural text compresses ~3x; pgbench's padding compresses ~35x and would hide compression cost).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from safehold.sources.postgres import PgTarget, connect

VOCABULARY = 6000
SENTENCES = 200_000
ORDERS_PER_BATCH = 200_000
CUSTOMERS_PER_ORDER = 10  # one customer row and two audit rows per ten order rows
# Heap share of the finished database (the btree indexes are built after the load); measured
# on this schema, so the finished pg_database_size lands close to the requested size.
HEAP_SHARE = 0.86

SCHEMA = """
CREATE TABLE words (id int PRIMARY KEY, word text NOT NULL);
CREATE TABLE sentences (id int PRIMARY KEY, txt text NOT NULL);
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    public_id uuid NOT NULL,
    email text NOT NULL,
    full_name text NOT NULL,
    created_at timestamptz NOT NULL,
    tier smallint NOT NULL,
    balance_cents bigint NOT NULL,
    profile jsonb NOT NULL
);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    order_ref uuid NOT NULL,
    placed_at timestamptz NOT NULL,
    status text NOT NULL,
    quantity integer NOT NULL,
    amount_cents bigint NOT NULL,
    checksum text NOT NULL,
    attributes jsonb NOT NULL,
    note text
);
CREATE TABLE audit_log (
    at timestamptz NOT NULL,
    actor uuid NOT NULL,
    message text NOT NULL
);
"""

# Random picks are computed once per row in a sub-select (OFFSET 0 keeps it a fence) and then
# joined to the word and sentence tables: array subscripts or correlated sub-selects per word
# are ~50x slower. power(random(), 3) favours the first (common) words, roughly like Zipf.
_PICKS = f"""
(SELECT g, random() AS k,
        1 + floor(random() * {SENTENCES})::int AS s1, 1 + floor(random() * {SENTENCES})::int AS s2,
        1 + floor(power(random(), 3) * {VOCABULARY})::int AS w1,
        1 + floor(power(random(), 3) * {VOCABULARY})::int AS w2
 FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g OFFSET 0) AS r
JOIN sentences s1 ON s1.id = r.s1 JOIN sentences s2 ON s2.id = r.s2
JOIN words w1 ON w1.id = r.w1 JOIN words w2 ON w2.id = r.w2
"""

ORDERS_BATCH = f"""
INSERT INTO orders
SELECT r.g,
       1 + floor(random() * %(customers)s)::bigint,
       gen_random_uuid(),
       timestamptz '2019-01-01' + random() * interval '5 years',
       (ARRAY['new','paid','shipped','delivered','returned','cancelled'])[1 + (r.g %% 6)],
       1 + floor(random() * 20)::int,
       floor(random() * 500000)::bigint,
       md5(r.g::text || random()::text),
       jsonb_build_object(
           'sku', substr(md5(random()::text), 1, 12),
           'weight_g', floor(random() * 20000)::int,
           'gift', r.k < 0.1,
           'tags', jsonb_build_array(w1.word, w2.word),
           'dims', jsonb_build_array(floor(random() * 100)::int, floor(random() * 100)::int)),
       CASE WHEN r.k < 0.15 THEN NULL WHEN r.k < 0.6 THEN s1.txt
            ELSE s1.txt || ' ' || s2.txt END
FROM {_PICKS}
"""

CUSTOMERS_BATCH = f"""
INSERT INTO customers
SELECT r.g,
       gen_random_uuid(),
       w1.word || '.' || substr(md5(r.g::text), 1, 6) || '@' || w2.word || '.example',
       initcap(w1.word) || ' ' || initcap(w2.word),
       timestamptz '2015-01-01' + random() * interval '9 years',
       floor(random() * 5)::smallint,
       floor(random() * 10000000)::bigint - 2000000,
       jsonb_build_object(
           'locale', (ARRAY['en_GB','de_DE','fr_FR','ja_JP','pt_BR'])[1 + (r.g %% 5)],
           'newsletter', r.k < 0.5,
           'bio', s1.txt,
           'score', round(random()::numeric * 100, 2))
FROM {_PICKS}
"""

AUDIT_BATCH = f"""
INSERT INTO audit_log
SELECT timestamptz '2023-01-01' + r.g * interval '1 second',
       gen_random_uuid(),
       w1.word || ' ' || w2.word || ': ' || s1.txt || ' #' || substr(md5(r.g::text), 1, 10)
FROM {_PICKS}
"""

INDEXES = [
    "CREATE UNIQUE INDEX customers_public_id ON customers (public_id)",
    "CREATE INDEX customers_email ON customers (email)",
    "CREATE INDEX orders_customer_id ON orders (customer_id)",
    "CREATE INDEX orders_placed_at ON orders (placed_at)",
    "CREATE INDEX orders_order_ref ON orders (order_ref)",
    "CREATE INDEX audit_log_at ON audit_log (at)",
]


def vocabulary(seed: int = 42) -> list[str]:
    """Pronounceable pseudo-words of 1-4 syllables, no two alike, short ones first."""
    rng = random.Random(seed)
    onsets = ["", "b", "br", "c", "ch", "d", "f", "g", "gr", "h", "k", "l", "m", "n", "p"]
    onsets += ["pl", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < VOCABULARY:
        syllables = rng.choice([1, 2, 2, 2, 3, 3, 4])
        words.add(
            "".join(
                rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                for _ in range(syllables)
            )
        )
    return sorted(words, key=lambda w: (len(w), w))


def sentences(words: list[str], seed: int = 7) -> list[str]:
    """Sentences of 5-25 words drawn with Zipf weights (word i has weight 1/i)."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(words))))
    result = []
    for _ in range(SENTENCES):
        picked = rng.choices(words, cum_weights=cumulative, k=rng.randint(5, 25))
        if rng.random() < 0.2:
            picked.insert(rng.randrange(len(picked)), str(rng.randint(2, 99999)))
        result.append(" ".join(picked).capitalize() + rng.choice(".....?!"))
    return result


def create_database(server: PgTarget, name: str) -> None:
    with connect(server, "postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_size(server: PgTarget, name: str) -> int:
    with connect(server, "postgres", autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
        return int(row[0]) if row else 0


def build_real(server: PgTarget, name: str, size_bytes: int, log: Callable[[str], None]) -> None:
    """Fill ``name`` in batches on two sessions until the heap reaches its share, then index."""
    create_database(server, name)
    target = server.with_db(name)
    words = vocabulary()
    with connect(target, autocommit=True) as conn:
        conn.execute(SCHEMA)
        with conn.cursor().copy("COPY words FROM STDIN") as copy:
            for number, word in enumerate(words, 1):
                copy.write_row((number, word))
        with conn.cursor().copy("COPY sentences FROM STDIN") as copy:
            for number, text in enumerate(sentences(words), 1):
                copy.write_row((number, text))
        conn.execute("ANALYZE words, sentences")
    heap_goal = int(size_bytes * HEAP_SHARE)
    batch_rows = max(10_000, min(100_000, size_bytes // 10_000))
    base = database_size(server, name)
    lock = threading.Lock()
    state = {"started": 0, "finished": 0}
    errors: list[BaseException] = []
    started = time.monotonic()

    def next_batch() -> int | None:
        """A new batch number, or None once the batches in flight should reach the goal."""
        with lock:
            size = database_size(server, name)
            finished = state["finished"]
            per_batch = (size - base) / finished if finished else 0.0
            in_flight = state["started"] - finished  # already partly counted in size
            if errors or size + (in_flight + 1) * per_batch / 2 >= heap_goal:
                return None
            state["started"] += 1
            return state["started"] - 1

    def worker(seed: float) -> None:
        try:
            with connect(target, autocommit=True) as conn:
                conn.execute("SELECT setseed(%s)", (seed,))
                conn.execute("SET work_mem = '64MB'")
                while (batch := next_batch()) is not None:
                    _load_batch(conn, batch, batch_rows)
                    with lock:
                        state["finished"] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (0.25, 0.75)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    log(
        f"  {name}: loaded {database_size(server, name) / 1e6:.0f} MB of rows in "
        f"{time.monotonic() - started:.0f}s; building indexes"
    )
    with connect(target, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        for statement in INDEXES:
            conn.execute(statement)
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")


def _load_batch(conn: psycopg.Connection[Any], batch: int, rows: int) -> None:
    lo = batch * rows + 1
    hi = lo + rows - 1
    per = rows // CUSTOMERS_PER_ORDER
    first = batch * per + 1
    with conn.transaction():
        conn.execute(ORDERS_BATCH, {"lo": lo, "hi": hi, "customers": hi // CUSTOMERS_PER_ORDER})
        conn.execute(CUSTOMERS_BATCH, {"lo": first, "hi": first + per - 1})
        conn.execute(AUDIT_BATCH, {"lo": 2 * first - 1, "hi": 2 * (first + per - 1)})


def build_pgbench(server: PgTarget, bin_dir: Path, name: str, scale: int) -> None:
    create_database(server, name)
    env = dict(os.environ, PGPASSWORD=server.password or "")
    argv = [
        str(bin_dir / "pgbench"),
        "-i",
        "-q",
        "-s",
        str(scale),
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        server.user,
        name,
    ]
    subprocess.run(argv, env=env, check=True, capture_output=True)
    with connect(server.with_db(name), autocommit=True) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
