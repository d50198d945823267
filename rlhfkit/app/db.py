"""Storage for the labelling app: SQLite in WAL mode (default) or Postgres, one transaction per state change.

What the schema (schema.py) guarantees (by constraints, not by application code alone):
- an item is shown to one annotator at most once: `assignments` has PRIMARY KEY (item_id, user_id);
- a retried submit is stored once: `labels` has UNIQUE (user_id, idem_key);
- one live label per (item, annotator): a partial UNIQUE index on labels(item_id, user_id) WHERE undone = 0;
- an item is not handed to more than N annotators at once: `items.n_active` (open + done assignments) is
  checked and updated inside the same serialised write transaction that creates the assignment.

SQLite (`Store`): writes are serialised by a process-wide lock plus BEGIN IMMEDIATE (so several processes on one
file also work, waiting on `busy_timeout`). `synchronous=FULL` by default: an acknowledged label has been fsync'd
to the WAL (handing out an assignment skips its own fsync; see `Store.write`).

Postgres (`PgStore`, a `postgresql://` SQLAlchemy URL, extra `rlhfkit[postgres]`): the same SQL and the same
constraints. The dialect layer is small: `?` placeholders become `%s`, the DDL's INTEGER/REAL become
BIGINT/DOUBLE PRECISION (ids: identity columns, read back with RETURNING), rows are addressable by name and
position like sqlite3.Row, and BEGIN IMMEDIATE becomes BEGIN + a transaction-scoped advisory lock, which serialises
writers across all processes on the database exactly as SQLite's write lock does (so the read-check-write logic
above needs no row locks). `synchronous_commit` stays on (durable acks); assignments commit with it off.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from rlhfkit.app.items import ParsedItem
from rlhfkit.app.schema import CHOICES, SCHEMA, SCHEMA_VERSION, TABLES, pg_schema  # noqa: F401


class StoreError(Exception):
    """A request that conflicts with stored state; `status` is the HTTP status the server maps it to."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------------
# The store.
# ---------------------------------------------------------------------------------------------------------


Row = Any
"""A result row, addressable by column name and by position: sqlite3.Row, or `PgRow` on Postgres."""


class Store:
    """All SQL lives here (SQLite; `PgStore` runs the same SQL on Postgres). Thread-safe: one connection per
    thread, writes serialised."""

    # Driver errors the server maps to 409 (a constraint said no) and 503 (busy/unavailable: retry).
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    busy_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "FULL", lease_s: float = 1800.0):
        self.path: str | None = str(path)
        """The database file (None on Postgres)."""
        self.name = self.path
        self._setup(synchronous, lease_s)

    def _setup(self, synchronous: str, lease_s: float) -> None:
        self.synchronous = synchronous
        self.lease_s = lease_s
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._create_schema()

    def _create_schema(self) -> None:
        conn = self.conn()
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.commit()

    def _insert_id(self, c: Any, sql: str, params: tuple) -> int:
        """Run an INSERT into a table with an `id` key; returns the new row's id."""
        return int(c.execute(sql, params).lastrowid)

    # -- connections / transactions ------------------------------------------------------------------------
    def conn(self) -> Any:
        """This thread's connection (sqlite3.Connection, or PgConn), made on first use and again if it is lost."""
        c = getattr(self._local, "conn", None)
        if c is None or not self._usable(c):
            c = self._connect()
            self._local.conn = c
            with self._all_lock:
                self._all.append(c)
        return c

    def _usable(self, c: Any) -> bool:
        return True

    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={self.synchronous}")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA busy_timeout=30000")
        return c

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        durable=False (handing out an assignment: soft state, re-issued if lost) commits without an fsync when the
        store runs synchronous=FULL. The WAL is append-only, so the next durable commit's fsync covers it too; and
        a killed process loses nothing either way (the OS still has the pages); only a power cut could.
        """
        c = self.conn()
        with self._write_lock:
            if self.synchronous == "FULL":
                c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for c in self._all:
                try:
                    c.close()
                except Exception:  # closing is best effort
                    pass
            self._all.clear()
        self._local = threading.local()

    def integrity_check(self) -> str:
        return self.conn().execute("PRAGMA integrity_check").fetchone()[0]

    # -- meta ------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        r = self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if r is None else r[0]

    # -- users / sessions ------------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, token_hash: str, *, replace: bool = False) -> int:
        with self.write() as c:
            row = c.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if not replace:
                    raise StoreError(f"user {name!r} exists (use --rotate to issue a new token)")
                c.execute("UPDATE users SET token_hash = ?, role = ? WHERE id = ?", (token_hash, role, row[0]))
                c.execute("DELETE FROM sessions WHERE user_id = ?", (row[0],))
                return int(row[0])
            return self._insert_id(
                c, "INSERT INTO users (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, role, token_hash, time.time()),
            )

    def user_by_name(self, name: str) -> Row | None:
        return self.conn().execute("SELECT * FROM users WHERE name = ? AND disabled = 0", (name,)).fetchone()

    def users(self) -> list[Row]:
        return self.conn().execute("SELECT id, name, role, created_at FROM users ORDER BY id").fetchall()

    def create_session(self, id_hash: str, user_id: int, ttl_s: float) -> None:
        now = time.time()
        with self.write() as c:
            c.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            c.execute(
                "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (id_hash, user_id, now, now + ttl_s),
            )

    def session_user(self, id_hash: str) -> Row | None:
        return self.conn().execute(
            "SELECT u.id, u.name, u.role FROM sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.id_hash = ? AND s.expires_at > ? AND u.disabled = 0",
            (id_hash, time.time()),
        ).fetchone()

    def delete_session(self, id_hash: str) -> None:
        with self.write() as c:
            c.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    # -- items -----------------------------------------------------------------------------------------------
    def add_items(self, items: list[ParsedItem]) -> int:
        """Insert items; ones already present (same ext_id) are left alone. Returns how many were new."""
        now = time.time()
        if not items:
            return 0
        with self.write() as c:
            cur = c.executemany(
                "INSERT INTO items (ext_id, prompt_json, responses_json, n_responses, kind, extra_json,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ext_id) DO NOTHING",
                [
                    (it.ext_id, json.dumps(it.prompt), json.dumps(it.responses), len(it.responses), it.kind,
                     json.dumps(it.extra), now)
                    for it in items
                ],
            )
            return cur.rowcount  # both drivers sum an executemany's row counts (conflicts count 0)

    def item(self, item_id: int) -> Row | None:
        return self.conn().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()

    # -- assignment ------------------------------------------------------------------------------------------
    def next_assignment(self, user_id: int, overlap: int, rng: random.Random | None = None) -> Row | None:
        """The user's newest open assignment (after an undo: the undone item), else a new one on an item with
        fewer than `overlap` annotators.

        Items closest to completion come first (so items reach N annotators before new ones start). Open
        assignments older than the lease are released (their item can go to someone else).
        """
        rng = rng or random.SystemRandom()
        c = self.conn()
        mine = c.execute(
            "SELECT * FROM assignments WHERE user_id = ? AND state = 'open' ORDER BY issued_at DESC LIMIT 1", (user_id,)
        ).fetchone()
        if mine is not None and mine["issued_at"] > time.time() - self.lease_s:
            return mine
        with self.write(durable=False) as c:
            self._release_expired(c)
            mine = c.execute(
                "SELECT * FROM assignments WHERE user_id = ? AND state = 'open' ORDER BY issued_at DESC LIMIT 1",
                (user_id,),
            ).fetchone()
            if mine is not None:
                return mine
            row = c.execute(
                "SELECT id, n_responses FROM items i WHERE n_active < ? AND NOT EXISTS "
                "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ?) "
                "ORDER BY n_active DESC, id LIMIT 1",
                (overlap, user_id),
            ).fetchone()
            if row is None:
                return None
            order = list(range(row["n_responses"]))
            rng.shuffle(order)  # left/right randomisation, stored with the assignment and then the label
            c.execute(
                "INSERT INTO assignments (item_id, user_id, state, shown_order, issued_at) VALUES (?, ?, 'open', ?, ?)",
                (row["id"], user_id, json.dumps(order), time.time()),
            )
            c.execute("UPDATE items SET n_active = n_active + 1 WHERE id = ?", (row["id"],))
            return c.execute(
                "SELECT * FROM assignments WHERE item_id = ? AND user_id = ?", (row["id"], user_id)
            ).fetchone()

    def _release_expired(self, c: Any) -> None:
        cutoff = time.time() - self.lease_s
        expired = c.execute(
            "SELECT item_id, user_id FROM assignments WHERE state = 'open' AND issued_at < ?", (cutoff,)
        ).fetchall()
        for r in expired:
            c.execute("DELETE FROM assignments WHERE item_id = ? AND user_id = ?", (r[0], r[1]))
            c.execute("UPDATE items SET n_active = n_active - 1 WHERE id = ?", (r[0],))

    # -- labels ----------------------------------------------------------------------------------------------
    def add_label(
        self,
        user_id: int,
        item_id: int,
        idem_key: str,
        choice: str,
        ranking_positions: list[int] | None = None,
        rationale: str = "",
    ) -> tuple[Row, bool]:
        """Store one label in one transaction. Returns (label row, duplicate?).

        A retry with the same idempotency key returns the stored label (duplicate=True) if the payload is the
        same, and is refused (409) if it differs. `ranking_positions` are positions on screen, best first.
        """
        if choice not in CHOICES:
            raise StoreError(f"unknown choice {choice!r}", 422)
        with self.write() as c:
            old = c.execute("SELECT * FROM labels WHERE user_id = ? AND idem_key = ?", (user_id, idem_key)).fetchone()
            if old is not None:
                same = old["item_id"] == item_id and old["choice"] == choice and old["rationale"] == rationale
                if same and choice == "rank":
                    shown = json.loads(old["shown_order"])
                    try:
                        same = [shown[p] for p in (ranking_positions or [])] == json.loads(old["ranking"])
                    except (IndexError, TypeError):
                        same = False
                if not same:
                    raise StoreError("idempotency key reused with a different request", 409)
                return old, True
            a = c.execute(
                "SELECT * FROM assignments WHERE item_id = ? AND user_id = ?", (item_id, user_id)
            ).fetchone()
            if a is None:
                raise StoreError("item not assigned to you (fetch /api/next)", 409)
            if a["state"] != "open":
                raise StoreError("item already labelled by you (undo first)", 409)
            order = json.loads(a["shown_order"])
            ranking = None
            if choice == "rank":
                if ranking_positions is None or sorted(ranking_positions) != list(range(len(order))):
                    raise StoreError(f"ranking must be a permutation of 0..{len(order) - 1}", 422)
                ranking = json.dumps([order[p] for p in ranking_positions])  # response indices, best first
            elif choice in ("left", "right", "tie", "both_bad") and len(order) != 2:
                raise StoreError("this item has more than 2 responses: send choice 'rank' with a ranking", 422)
            label_id = self._insert_id(
                c, "INSERT INTO labels (item_id, user_id, idem_key, choice, shown_order, ranking, rationale,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item_id, user_id, idem_key, choice, a["shown_order"], ranking, rationale, time.time()),
            )
            if choice == "skip":
                c.execute("UPDATE assignments SET state = 'skipped' WHERE item_id = ? AND user_id = ?", (item_id, user_id))
                c.execute("UPDATE items SET n_active = n_active - 1 WHERE id = ?", (item_id,))
            else:
                c.execute("UPDATE assignments SET state = 'done' WHERE item_id = ? AND user_id = ?", (item_id, user_id))
            return c.execute("SELECT * FROM labels WHERE id = ?", (label_id,)).fetchone(), False

    def undo_last(self, user_id: int, label_id: int | None = None) -> Row | None:
        """Undo the user's latest live label (or check that `label_id` is it). Idempotent: undoing an already
        undone `label_id` returns it unchanged. The item becomes the user's open assignment again."""
        with self.write() as c:
            if label_id is not None:
                lab = c.execute("SELECT * FROM labels WHERE id = ? AND user_id = ?", (label_id, user_id)).fetchone()
                if lab is None:
                    raise StoreError("no such label of yours", 404)
                if lab["undone"]:
                    return lab
            last = c.execute(
                "SELECT * FROM labels WHERE user_id = ? AND undone = 0 ORDER BY id DESC LIMIT 1", (user_id,)
            ).fetchone()
            if last is None:
                return None
            if label_id is not None and last["id"] != label_id:
                raise StoreError("only your latest label can be undone", 409)
            c.execute("UPDATE labels SET undone = 1, undone_at = ? WHERE id = ?", (time.time(), last["id"]))
            # Reopen the assignment; a fresh issue time so the lease starts again.
            prev = c.execute(
                "SELECT state FROM assignments WHERE item_id = ? AND user_id = ?", (last["item_id"], user_id)
            ).fetchone()
            c.execute(
                "UPDATE assignments SET state = 'open', issued_at = ? WHERE item_id = ? AND user_id = ?",
                (time.time(), last["item_id"], user_id),
            )
            if prev is not None and prev["state"] == "skipped":
                c.execute("UPDATE items SET n_active = n_active + 1 WHERE id = ?", (last["item_id"],))
            return c.execute("SELECT * FROM labels WHERE id = ?", (last["id"],)).fetchone()

    def live_labels(self, *, include_skips: bool = False) -> list[Row]:
        q = (
            "SELECT l.*, u.name AS annotator FROM labels l JOIN users u ON u.id = l.user_id WHERE l.undone = 0"
            + ("" if include_skips else " AND l.choice != 'skip'")
            + " ORDER BY l.id"
        )
        return self.conn().execute(q).fetchall()

    def count_live_labels(self, ext_prefix: str = "") -> int:
        """Live labels (not undone, not skips); with `ext_prefix`, only those on items whose id starts with it."""
        if not ext_prefix:
            return self.conn().execute("SELECT COUNT(*) FROM labels WHERE undone = 0 AND choice != 'skip'").fetchone()[0]
        return self.conn().execute(
            "SELECT COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id WHERE l.undone = 0 AND l.choice != 'skip'"
            " AND substr(i.ext_id, 1, ?) = ?", (len(ext_prefix), ext_prefix)).fetchone()[0]

    def progress(self, overlap: int) -> dict:
        c = self.conn()
        n_items = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        done_per_item = c.execute(
            "SELECT item_id, COUNT(*) AS n FROM assignments WHERE state = 'done' GROUP BY item_id"
        ).fetchall()
        complete = sum(1 for r in done_per_item if r["n"] >= overlap)
        per_user = c.execute(
            "SELECT u.name, u.role, "
            " SUM(CASE WHEN l.undone = 0 AND l.choice != 'skip' THEN 1 ELSE 0 END) AS labels,"
            " SUM(CASE WHEN l.undone = 0 AND l.choice = 'skip' THEN 1 ELSE 0 END) AS skips,"
            " SUM(CASE WHEN l.undone = 1 THEN 1 ELSE 0 END) AS undone"
            " FROM users u LEFT JOIN labels l ON l.user_id = u.id GROUP BY u.id ORDER BY u.id"
        ).fetchall()
        return {
            "items": n_items,
            "overlap": overlap,
            "items_complete": complete,
            "labels": self.count_live_labels(),
            "needed": n_items * overlap,
            "annotators": [
                {"name": r["name"], "role": r["role"], "labels": r["labels"] or 0, "skips": r["skips"] or 0,
                 "undone": r["undone"] or 0}
                for r in per_user
            ],
        }

    def user_progress(self, user_id: int, overlap: int) -> dict:
        c = self.conn()
        mine = c.execute(
            "SELECT COUNT(*) FROM labels WHERE user_id = ? AND undone = 0 AND choice != 'skip'", (user_id,)
        ).fetchone()[0]
        remaining = c.execute(
            "SELECT COUNT(*) FROM items i WHERE n_active < ? AND NOT EXISTS "
            "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = ?)",
            (overlap, user_id),
        ).fetchone()[0]
        total = c.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return {"labelled": mine, "available": remaining, "items": total}


# ---------------------------------------------------------------------------------------------------------
# Postgres: the dialect layer under the same Store.
# ---------------------------------------------------------------------------------------------------------

PG_WRITE_LOCK = 0x726C686674  # advisory lock key ("rlhft"): one writer at a time, as SQLite's BEGIN IMMEDIATE
PG_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


@functools.lru_cache(maxsize=512)
def pg_sql(sql: str) -> str:
    """sqlite3's `?` placeholders as psycopg's `%s` (a literal % doubled). None of our SQL has `?` in a string."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgRow:
    """A Postgres row addressable like sqlite3.Row: row["name"] or row[0]; keys() for dict(row)."""

    __slots__ = ("_keys", "_values")

    def __init__(self, keys: dict[str, int], values: tuple):
        self._keys, self._values = keys, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._keys[key]]

    def keys(self) -> list[str]:
        return list(self._keys)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._keys, self._values))})"


def _pg_row_factory(cursor: Any):
    keys: dict[str, int] = {}
    for i, col in enumerate(cursor.description or ()):
        keys.setdefault(col.name, i)  # the first column of a name wins, as in sqlite3.Row
    return lambda values: PgRow(keys, values)


class PgConn:
    """A psycopg connection (autocommit; writes open their own transaction) behind the sqlite3-style calls that
    Store makes: execute/executemany with `?` placeholders, returning cursors of `PgRow`s."""

    def __init__(self, fairy: Any):
        self.fairy = fairy  # SQLAlchemy's handle: keeps the connection alive; closing it closes the connection
        self.raw = fairy.driver_connection
        self.raw.autocommit = True
        self.raw.row_factory = _pg_row_factory

    def execute(self, sql: str, params: tuple | list = ()) -> Any:
        return self.raw.execute(pg_sql(sql), params)

    def executemany(self, sql: str, seq: list) -> Any:
        cur = self.raw.cursor()
        cur.executemany(pg_sql(sql), seq)
        return cur

    def close(self) -> None:
        self.fairy.close()


def _pg_url(url: str) -> Any:
    """Parse a postgres URL with SQLAlchemy, driver psycopg (3); a clear error when the extra is missing."""
    try:
        import psycopg  # noqa: F401
        from sqlalchemy.engine import make_url
    except ImportError as e:
        raise ImportError(
            f"a postgresql:// database needs the postgres extra: pip install 'rlhfkit[postgres]' (missing: {e.name})"
        ) from None
    scheme = url.split("://", 1)[0].lower()
    if scheme not in PG_SCHEMES:
        raise ValueError(f"database URL scheme {scheme!r}: use postgresql:// or postgresql+psycopg:// (psycopg 3)")
    return make_url("postgresql+psycopg://" + url.split("://", 1)[1])


class PgStore(Store):
    """The Store on Postgres through an SQLAlchemy URL (postgresql://user:pass@host/db, driver psycopg 3).

    Same SQL, same constraints. What differs is here: connections (one per thread, as with SQLite, made by the
    SQLAlchemy engine), `write` (BEGIN + pg_advisory_xact_lock instead of BEGIN IMMEDIATE; `lock_timeout` 30 s
    instead of `busy_timeout`), `synchronous` (FULL: synchronous_commit on; NORMAL: off), ids via RETURNING.
    """

    def __init__(self, url: str, *, synchronous: str = "FULL", lease_s: float = 1800.0):
        u = _pg_url(url)  # first: a clear error when the extra is missing
        import psycopg
        from sqlalchemy import create_engine, exc
        from sqlalchemy.pool import NullPool

        self.path = None
        self.name = u.database or "postgres"
        self.url = u.render_as_string(hide_password=True)
        # NullPool: the store keeps one connection per thread itself, for the thread's lifetime.
        self.engine = create_engine(u, poolclass=NullPool)
        self.integrity_errors = (psycopg.IntegrityError, exc.IntegrityError)
        self.busy_errors = (psycopg.OperationalError, exc.OperationalError)
        try:
            self._setup(synchronous, lease_s)
        except (psycopg.OperationalError, exc.OperationalError) as e:
            raise ValueError(f"cannot connect to {self.url}: {getattr(e, 'orig', None) or e}") from None

    def _create_schema(self) -> None:
        with self.write() as c:  # under the write lock: concurrent first starts do not race on CREATE TABLE
            for stmt in pg_schema():
                c.execute(stmt)
            c.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                      (str(SCHEMA_VERSION),))

    def _insert_id(self, c: Any, sql: str, params: tuple) -> int:
        return int(c.execute(sql + " RETURNING id", params).fetchone()[0])

    def _usable(self, c: PgConn) -> bool:
        return not (c.raw.closed or c.raw.broken)  # a lost connection is replaced on the thread's next call

    def _connect(self) -> PgConn:
        c = PgConn(self.engine.raw_connection())
        c.execute("SET lock_timeout = '30s'")
        if self.synchronous != "FULL":
            c.execute("SET synchronous_commit = off")
        return c

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[PgConn]:
        """One write transaction, serialised against every other writer on this database (all processes) by a
        transaction-scoped advisory lock; rolled back on any exception. durable=False commits without waiting
        for the WAL flush (synchronous_commit off for this transaction only)."""
        c = self.conn()
        with self._write_lock, c.raw.transaction():
            c.execute(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")
            if not durable:
                c.execute("SET LOCAL synchronous_commit = off")
            yield c

    def integrity_check(self) -> str:
        """Postgres has no integrity_check pragma: this checks the schema version and that every table reads."""
        for t in TABLES:
            self.conn().execute(f"SELECT COUNT(*) FROM {t}").fetchone()
        v = self.get_meta("schema_version")
        return "ok" if v == str(SCHEMA_VERSION) else f"schema_version {v!r}, expected {SCHEMA_VERSION}"


def open_store(url: str | os.PathLike, **kw: Any) -> Store:
    """`labels.sqlite` or `sqlite:///path` -> Store; `postgresql://user:pass@host/db` -> PgStore (needs the
    `rlhfkit[postgres]` extra). Anything else is a ValueError."""
    s = str(url)
    if "://" not in s:
        return Store(s, **kw)
    if s.startswith("sqlite:///"):
        return Store(s[len("sqlite:///"):], **kw)
    scheme = s.split("://", 1)[0].lower()
    if scheme in PG_SCHEMES:
        return PgStore(s, **kw)
    # (the URL itself is not echoed: it may hold a password)
    raise ValueError(f"database URL scheme {scheme!r}: use a SQLite path, sqlite:///path or postgresql://...")
