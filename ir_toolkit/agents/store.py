"""An agent's local idempotency store and outbox (SQLite, ``synchronous=FULL``: a commit is on disk).

Per step id it remembers ``intent`` (an attempt began) or ``done`` (with the signed result), so a
redelivered step is answered from the store (done) or verified first (intent without done). Every
message the agent signs is numbered (``agent_seq``), chained to the previous one
(``prev_agent_hash``) and written to the outbox in the same transaction as the step's state, before
it is published; messages not yet published (the agent died between commit and publish) are
published again, in order, when the agent starts.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ir_toolkit.agents.envelope import GENESIS, message_hash

INTENT = "intent"
DONE = "done"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (step_id TEXT PRIMARY KEY, state TEXT NOT NULL, plan_hash TEXT NOT NULL,
                                  attempt INTEGER NOT NULL, result_seq INTEGER);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, doc TEXT NOT NULL,
                                   published INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class AgentStore:
    def __init__(self, path: Path, agent_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = not path.exists()
        if new:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='agent_id'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('agent_id', ?)", (agent_id,))
        elif row[0] != agent_id:
            raise StoreError(f"{path} belongs to agent {row[0]!r}, not {agent_id!r} (one store per agent key)")
        self.agent_id = agent_id

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def step(self, step_id: str) -> tuple[str | None, dict[str, Any] | None]:
        """(state, the stored signed result if done)."""
        with self._lock:
            row = self._db.execute("SELECT state, result_seq FROM steps WHERE step_id=?", (step_id,)).fetchone()
            if row is None:
                return None, None
            if row[0] == DONE and row[1] is not None:
                doc = self._db.execute("SELECT doc FROM outbox WHERE seq=?", (row[1],)).fetchone()
                return DONE, json.loads(doc[0]) if doc else None
            return row[0], None

    def head(self) -> tuple[int, str]:
        """The last message's seq and hash (0 and the genesis hash for a new agent)."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
            return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def append(self, sign: Callable[[int, str], dict[str, Any]], *, step_id: str | None = None,
               state: str | None = None, plan_hash: str = "", attempt: int = 0) -> dict[str, Any]:
        """Sign the next message of the chain (``sign(seq, prev_hash)``) and commit it to the outbox,
        with the step's new state, in one durable transaction. Returns the signed message."""
        with self._lock:
            seq, prev = self.head()
            doc = sign(seq + 1, prev)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO outbox (seq, hash, doc) VALUES (?, ?, ?)",
                                 (seq + 1, message_hash(doc), json.dumps(doc, sort_keys=True)))
                if step_id is not None and state is not None:
                    self._db.execute(
                        "INSERT INTO steps (step_id, state, plan_hash, attempt, result_seq) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(step_id) DO UPDATE SET state=excluded.state, attempt=excluded.attempt, "
                        "result_seq=excluded.result_seq",
                        (step_id, state, plan_hash, attempt, seq + 1 if state == DONE else None))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return doc

    def mark_published(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE outbox SET published=1 WHERE seq=?", (int(doc["agent_seq"]),))

    def unpublished(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM outbox WHERE published=0 ORDER BY seq").fetchall()
            return [json.loads(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._db.execute("SELECT state, COUNT(*) FROM steps GROUP BY state").fetchall())
            out["messages"] = self.head()[0]
            return out
