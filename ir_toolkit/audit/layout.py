"""Where a case's audit log lives (``$IRKIT_HOME/cases/<case>/audit/``)::

    log.jsonl                one canonical JSON record per line
    log.mac                  the writer's per-line MACs ("<seq> <hex>", keyed from the signing key)
    pending.jsonl            records queued while the log was unavailable (MACed; appended on the next open)
    checkpoint.note          the latest signed checkpoint (replaced atomically)
    checkpoints/<size>.note  checkpoints kept for good: key rotations, phase ends, close
    witnessed/<witness>-<size>.note   cosigned copies returned by witnesses
    forks/<stamp>/           evidence written when two signed checkpoints disagree
    .lock                    held (flock) by the one process writing the log
"""

from __future__ import annotations

import re
from pathlib import Path

from ir_toolkit.home import case_dir

LOG_FILE = "log.jsonl"
MAC_FILE = "log.mac"
PENDING_FILE = "pending.jsonl"
CHECKPOINT_FILE = "checkpoint.note"
CHECKPOINTS_DIR = "checkpoints"
WITNESSED_DIR = "witnessed"
FORKS_DIR = "forks"
LOCK_FILE = ".lock"


def audit_dir(case_id: str, *, create: bool = False) -> Path:
    path = case_dir(case_id, create=create) / "audit"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def log_path(case_id: str) -> Path:
    return audit_dir(case_id) / LOG_FILE


def checkpoint_path(case_id: str) -> Path:
    return audit_dir(case_id) / CHECKPOINT_FILE


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a key name or origin."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def local_checkpoint_files(directory: Path) -> list[Path]:
    """Every checkpoint file kept in an audit directory (latest first, then by size)."""
    files: list[Path] = []
    latest = directory / CHECKPOINT_FILE
    if latest.exists():
        files.append(latest)
    kept = directory / CHECKPOINTS_DIR
    if kept.is_dir():
        files.extend(sorted(kept.glob("*.note"), key=lambda p: (len(p.stem), p.stem)))
    witnessed = directory / WITNESSED_DIR
    if witnessed.is_dir():
        files.extend(sorted(witnessed.glob("*.note")))
    return files
