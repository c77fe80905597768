"""Extract a bundle into a directory, decrypting on the fly and re-hashing every member.

Members land under ``OUT/`` with the archive's names (``files/etc/passwd``,
``live/...``, ``collection.log``, ``manifest.json``). Modification times are
restored (clamped to what the platform can represent); every file is written
read-only for its owner (``0400``: evidence, and never executable, whatever mode
the host reported) and ownership is not applied (the manifest keeps the
originals). Member names are checked so nothing can be written outside ``OUT``.

A member that cannot be written (a name that aliases another one, a time the
platform cannot set) is a problem of that member: extraction goes on with the
rest, so a bundle that ``evidence verify`` accepts can always be extracted.
:func:`decrypt_raw` writes the decrypted tar as it is (``evidence extract --raw``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

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
                try:
                    target = _safe_target(out, member.name)
                except VerificationFailed as exc:  # nothing is written for it; the others still are
                    result.problems.append(f"{exc}; not extracted")
                    continue
                sha = hashlib.sha256()
                written = False
                try:
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                except OSError as exc:
                    fd = None
                    result.problems.append(f"{member.name}: not extracted: {exc.strerror or exc} "
                                           "(another member has the same name after normalisation?)")
                if fd is not None:
                    with os.fdopen(fd, "wb") as fh:
                        while chunk := source.read(1 << 20):
                            sha.update(chunk)
                            fh.write(chunk)
                            if member.name == MANIFEST_NAME:
                                manifest_bytes = (manifest_bytes or b"") + chunk
                    written = True
                else:
                    while chunk := source.read(1 << 20):
                        sha.update(chunk)
                if written:
                    try:
                        mtime = min(max(float(member.mtime), 0.0), 253402300799.0)
                        os.utime(target, (mtime, mtime))
                    except (OSError, ValueError, OverflowError) as exc:
                        result.problems.append(f"{member.name}: modification time {member.mtime!r} not set: {exc}")
                    os.chmod(target, 0o400)
                if member.name not in seen:
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


def decrypt_raw(collection: Collection, out_file: Path, *,
                identities: list[X25519PrivateKey] | None = None) -> int:
    """Write the bundle's (decrypted) tar to ``out_file`` (new, 0600), authenticating it to the end.

    Returns the number of bytes written. The archive is not parsed: whatever irkit cannot
    extract can still be read with other tools.
    """
    import io

    from ir_toolkit.triage.bundle import _COPY_BUF
    from ir_toolkit.triage.crypto import DecryptingReader
    from ir_toolkit.triage.transfer import HashingReader

    total = 0
    fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(collection.bundle_path, "rb") as src, os.fdopen(fd, "wb") as dst:
            source: Any = src
            if collection.encrypted:
                source = io.BufferedReader(DecryptingReader(HashingReader(src), list(identities or []),  # type: ignore[arg-type]
                                                            name=collection.bundle_path.name), _COPY_BUF)
            while chunk := source.read(_COPY_BUF):
                dst.write(chunk)
                total += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except BaseException:
        out_file.unlink(missing_ok=True)
        raise
    return total
