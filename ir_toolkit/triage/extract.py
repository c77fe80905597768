"""Extract a bundle into a directory, decrypting on the fly and re-hashing every member.

Members land under ``OUT/`` with the archive's names (``files/etc/passwd``,
``live/...``, ``collection.log``, ``manifest.json``). Modification times are
restored; setuid/setgid/sticky bits and group/other write bits are dropped and
ownership is not applied (the manifest keeps the originals). Member names are
checked so nothing can be written outside ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ir_toolkit.errors import InputError, VerificationFailed
from ir_toolkit.triage.bundle import MANIFEST_NAME, Collection, open_archive
from ir_toolkit.triage.tarstream import TarFormatError
from ir_toolkit.triage.verify import expected_members

_PREFIXES = ("files/", "live/", "retry/")
_TOP = ("collection.log", MANIFEST_NAME)


@dataclass
class ExtractResult:
    members: int = 0
    problems: list[str] = field(default_factory=list)


def _safe_target(out: Path, name: str) -> Path:
    parts = PurePosixPath(name).parts
    if (not (name.startswith(_PREFIXES) or name in _TOP) or name.startswith("/") or ".." in parts
            or "" in parts):
        raise VerificationFailed(f"refusing archive member with an unsafe name: {name!r}")
    return out.joinpath(*parts)


def extract_collection(collection: Collection, out: Path, *,
                       identities: list[X25519PrivateKey] | None = None) -> ExtractResult:
    """Extract ``collection`` into ``out`` (new or empty); return the members whose hash differs."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = ExtractResult()
    seen: dict[str, str] = {}
    manifest_bytes: bytes | None = None
    current = "(start of archive)"
    try:
        with open_archive(collection, identities) as (members, stream):
            for member, source in members:
                current = member.name
                if not member.isreg():
                    result.problems.append(f"{member.name}: not a regular file; not extracted")
                    continue
                target = _safe_target(out, member.name)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                sha = hashlib.sha256()
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    while chunk := source.read(1 << 20):
                        sha.update(chunk)
                        fh.write(chunk)
                        if member.name == MANIFEST_NAME:
                            manifest_bytes = (manifest_bytes or b"") + chunk
                os.chmod(target, member.mode & 0o755 | 0o400)
                os.utime(target, (member.mtime, member.mtime))
                seen[member.name] = sha.hexdigest()
                result.members += 1
            stream.drain()
    except VerificationFailed as exc:
        raise VerificationFailed(f"{exc} (while extracting {current}); extraction stopped") from None
    except (TarFormatError, EOFError) as exc:
        raise VerificationFailed(f"{collection.bundle_path.name}: corrupt archive after {current}: {exc}") from None
    if manifest_bytes is None:
        result.problems.append(f"{MANIFEST_NAME} missing from the bundle: nothing to check against")
        return result
    seal = collection.seal()
    if hashlib.sha256(manifest_bytes).hexdigest() != seal.get("manifest_sha256"):
        result.problems.append(f"{MANIFEST_NAME}: SHA-256 differs from the seal")
    for name, (want, what) in sorted(expected_members(json.loads(manifest_bytes)).items()):
        got = seen.get(name)
        if got is None:
            result.problems.append(f"{name} ({what}): missing from the bundle")
        elif got != want:
            result.problems.append(f"{name} ({what}): SHA-256 {got}, manifest says {want}")
    return result
