"""Artifact definitions and profiles: the declarative half of triage.

An artifact file (``ir_toolkit/triage/artifacts/<os>/*.yml``) is::

    version: 1
    artifacts:
      - name: linux.live.processes          # <os>.<group>.<what>, unique
        description: Processes with command lines
        os: linux
        collector: command                  # command | file | glob | hash
        command: ps -eo pid,ppid,user,lstart,args
        order: 10                           # lower runs first: volatile data first
        modifies_state: false               # true: only with an explicit flag

``command`` runs a shell command and keeps its output; with ``sections`` (tag ->
file name) the output lines that start with ``tag<TAB>`` are stored, without
the tag, in their own file beside it (one walk of the file system can yield a
bodyfile and several lists). ``compress: gzip`` (Linux) has the host compress
the output; the bundle keeps the compressed bytes as received
(``live/<output>.gz``), the sections stay plain. ``file`` copies literal
paths, ``glob`` copies paths given as shell glob patterns, ``hash`` records
metadata and a host-side SHA-256 without copying. For the file-like collectors
a matched directory is walked (``max_depth``), filtered by ``name_patterns``,
``exclude`` (patterns on the full path), ``executable``, ``perm`` (a ``find
-perm`` mode) and ``exclude_fstypes``; ``%user_home%`` expands to every home
directory in the host's passwd database. ``max_file_size`` (``10M``, ``1G`` or
bytes) caps copies (and command output); a file over the cap is never dropped
silently: it is listed in the manifest with its metadata and the reason.

A profile (``profiles.yml``) selects artifacts by name and glob, in order;
``!pattern`` removes. A pattern that selects nothing is an error, so a typo
cannot silently produce a near-empty collection.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ir_toolkit.errors import FileInputError, InputError
from ir_toolkit.yamlfile import LDict, LList, load, validate

ARTIFACTS_DIR = Path(__file__).parent / "artifacts"
PROFILES_FILE = Path(__file__).parent / "profiles.yml"
USER_HOME = "%user_home%"
DEFAULT_FILE_CAP = 256 * 1024 * 1024
DEFAULT_OUTPUT_CAP = 64 * 1024 * 1024

_NAME = re.compile(r"^(linux|windows)(\.[a-z0-9][a-z0-9_]*){2,}$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_GLOB_CHARS = re.compile(r"[*?\[]")
_PERM = re.compile(r"^[-/]?[0-7]{1,4}$")
_FSTYPE = re.compile(r"^[a-z0-9._-]{1,32}$")
_OUTPUT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
_TAG = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def parse_size(value: Any) -> int:
    """``10M`` / ``1G`` / ``512k`` / ``1048576`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 10M")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use bytes or a number with k, M, G or T")
    return int(match[1]) * _UNITS[match[2].lower()]


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Collector = Literal["command", "file", "glob", "hash"]
OsName = Literal["linux", "windows"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Artifact(_Model):
    """One rule: what to run or which paths to collect, and how."""

    name: str
    description: str = Field(min_length=1)
    os: OsName
    collector: Collector
    command: str | None = None
    shell: Literal["sh", "powershell", "cmd"] | None = None
    output: str | None = Field(default=None, description="file name of a command's output in the bundle")
    sections: dict[str, str] = Field(
        default={}, description="tag -> file name: output lines starting with 'tag<TAB>' are stored in that file")
    compress: Literal["gzip"] | None = Field(
        default=None, description="Linux command artifacts: the host compresses the output (gzip -1) and the bundle "
                                  "keeps those bytes as they came (live/<output>.gz, hashed as received); sections "
                                  "stay plain text, split off on the host")
    paths: list[str] = []
    name_patterns: list[str] = []
    exclude: list[str] = []
    executable: bool = False
    perm: str | None = None
    max_file_size: ByteSize | None = None
    max_depth: int | None = Field(default=None, ge=0, le=64)
    xdev: bool = False
    exclude_fstypes: list[str] = []
    listed_by: str | None = Field(
        default=None, pattern=r"^(linux|windows)(\.[a-z0-9][a-z0-9_]*){2,}#[a-z][a-z0-9_]{0,31}$",
        description="'<command artifact>#<section>': take the file list from that section of the walk's output "
                    "(no walk of its own); paths and filters are the fallback when that listing is not there")
    decode: Literal["login_records"] | None = Field(
        default=None, description="decode copied wtmp/btmp/utmp/lastlog files on the controller (live/decoded/...)")
    order: int = Field(default=50, ge=0, le=1000)
    modifies_state: bool = False
    timeout: int = Field(default=120, ge=1, le=86400)
    references: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> Artifact:
        if not _NAME.match(self.name):
            raise ValueError(
                f"artifact name {self.name!r}: use <os>.<group>.<what> in lowercase, e.g. linux.live.processes"
            )
        if not self.name.startswith(self.os + "."):
            raise ValueError(f"artifact name {self.name!r} must start with its os ({self.os}.)")
        if self.shell is None:
            object.__setattr__(self, "shell", "powershell" if self.os == "windows" else "sh")
        if self.collector == "command":
            if not self.command:
                raise ValueError("a command artifact needs command:")
            if self.paths or self.name_patterns or self.exclude or self.perm or self.executable:
                raise ValueError("a command artifact takes no paths, name_patterns, exclude, perm or executable")
            for out in [self.output, *self.sections.values()]:
                if out is not None and not _OUTPUT.match(out):
                    raise ValueError(f"output {out!r}: a plain file name (letters, digits, '.', '_', '-')")
            for tag in self.sections:
                if not _TAG.match(tag):
                    raise ValueError(f"section tag {tag!r}: lowercase letters, digits and '_'")
            if self.compress is not None and self.os != "linux":
                raise ValueError("compress: is only for Linux command artifacts")
            names = [self.output_name, *self.sections.values()]
            if self.compress is not None:
                names += [self.compressed_name, self.untagged_name]
            if len(set(names)) != len(names):
                raise ValueError("sections: every section needs its own file name, not the main output's")
        else:
            if self.command:
                raise ValueError(f"a {self.collector} artifact takes paths:, not command:")
            if not self.paths:
                raise ValueError(f"a {self.collector} artifact needs paths:")
            if self.output is not None or self.sections or self.compress is not None:
                raise ValueError("output:, sections: and compress: are only for command artifacts")
            if self.listed_by is not None and self.collector != "hash":
                raise ValueError("listed_by: is only for hash artifacts (a listing is metadata; copies stay explicit)")
            for path in self.paths:
                _check_path(path, self.os, literal=self.collector == "file")
        if self.listed_by is not None and self.collector == "command":
            raise ValueError("listed_by: is only for hash artifacts")
        if self.decode is not None and not self.copies_files:
            raise ValueError("decode: is only for file and glob artifacts")
        if self.perm is not None and not _PERM.match(self.perm):
            raise ValueError(f"perm {self.perm!r}: a find -perm mode such as /6000 or -4000")
        for fstype in self.exclude_fstypes:
            if not _FSTYPE.match(fstype):
                raise ValueError(f"exclude_fstypes: {fstype!r} is not a file system type name")
        for pattern in [*self.name_patterns, *self.exclude]:
            if not pattern or "\x00" in pattern or "\n" in pattern:
                raise ValueError("empty pattern or pattern with a newline")
        return self

    @property
    def copies_files(self) -> bool:
        return self.collector in ("file", "glob")

    @property
    def file_cap(self) -> int:
        """Largest file copied (file/glob) or command output kept."""
        if self.max_file_size is not None:
            return self.max_file_size
        return DEFAULT_OUTPUT_CAP if self.collector == "command" else DEFAULT_FILE_CAP

    @property
    def output_name(self) -> str:
        return self.output or f"{self.name}.txt"

    @property
    def compressed_name(self) -> str:
        """The bundle name of the output when the host compressed it (``<output>.gz``)."""
        return self.output_name + ".gz"

    @property
    def untagged_name(self) -> str:
        """Where untagged lines that a host put among a compressed output's sections are kept."""
        return self.output_name + ".untagged"


def _check_path(path: str, os_name: str, *, literal: bool) -> None:
    if not path or "\x00" in path or "\n" in path:
        raise ValueError("empty path or a path with a newline")
    if os_name == "linux":
        if not (path.startswith("/") or path.startswith(USER_HOME + "/")):
            raise ValueError(f"path {path!r} must be absolute (or start with {USER_HOME}/)")
        if "/../" in path + "/" or path.endswith("/.."):
            raise ValueError(f"path {path!r} must not contain '..'")
    else:
        if not (re.match(r"^[A-Za-z]:\\", path) or path.startswith("%")):
            raise ValueError(f"path {path!r} must be absolute (C:\\...) or start with a %variable%")
    if literal and _GLOB_CHARS.search(path.replace(USER_HOME, "")):
        raise ValueError(f"path {path!r} has glob characters: use collector: glob")


class ArtifactFile(_Model):
    version: Literal[1] = 1
    artifacts: list[Artifact] = Field(min_length=1)


#: evidence kinds (docs/containment.md): a ``volatile`` snapshot (live state only, taken in seconds before
#: isolation) or a ``full`` bundle (the whole triage, before credentials or files change)
VOLATILE = "volatile"
FULL = "full"
EVIDENCE_KINDS = (VOLATILE, FULL)


class Profile(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = Field(min_length=1)
    artifacts: list[str] = Field(min_length=1)
    #: what the evidence gate counts a bundle of this profile as (recorded in its seal and custody record)
    kind: Literal["volatile", "full"] = "full"


class ProfilesFile(_Model):
    version: Literal[1] = 1
    profiles: list[Profile] = Field(min_length=1)


@dataclass(frozen=True)
class Catalog:
    """Every artifact definition by name, and every profile by name."""

    artifacts: dict[str, Artifact]
    profiles: dict[str, Profile]

    def select(
        self,
        profile: str,
        os_name: str,
        *,
        allow_modifies_state: bool = False,
    ) -> Selection:
        """The artifacts of ``profile`` for hosts running ``os_name``, volatile first."""
        try:
            prof = self.profiles[profile]
        except KeyError:
            raise InputError(
                f"unknown triage profile {profile!r} (known: {', '.join(sorted(self.profiles))})"
            ) from None
        names = resolve_patterns(prof.artifacts, self.artifacts, where=f"profile {profile}")
        chosen = [self.artifacts[n] for n in names if self.artifacts[n].os == os_name]
        held = [a for a in chosen if a.modifies_state and not allow_modifies_state]
        run = [a for a in chosen if not (a.modifies_state and not allow_modifies_state)]
        run.sort(key=lambda a: (a.order, a.name))
        return Selection(profile=profile, artifacts=tuple(run), held_back=tuple(held), kind=prof.kind)


@dataclass(frozen=True)
class Selection:
    profile: str
    artifacts: tuple[Artifact, ...]
    held_back: tuple[Artifact, ...] = ()
    """``modifies_state`` artifacts in the profile that were not run (no explicit flag)."""
    #: the evidence kind of the profile (``volatile`` or ``full``)
    kind: str = FULL


def resolve_patterns(patterns: list[str], known: dict[str, Any], *, where: str) -> list[str]:
    """Apply include/``!exclude`` name globs in order; every pattern must match something."""
    selected: list[str] = []
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        matches = sorted(n for n in known if fnmatch.fnmatchcase(n, pattern))
        if not matches:
            raise InputError(f"{where}: {raw!r} matches no artifact")
        if negate:
            selected = [n for n in selected if n not in matches]
        else:
            selected.extend(n for n in matches if n not in selected)
    return selected


def load_artifact_file(path: Path) -> tuple[list[Artifact], Any]:
    """The artifacts of one file, and the raw data (for line numbers)."""
    data = load(path, what="artifact file")
    if not isinstance(data, LDict):
        raise FileInputError(str(path), getattr(data, "line", 1), None, "an artifact file is a mapping with artifacts:")
    parsed: ArtifactFile = validate(ArtifactFile, data, path)
    return list(parsed.artifacts), data


def load_catalog(
    artifact_dirs: list[Path] | None = None,
    profiles_file: Path | None = None,
    *,
    extra_dirs: list[Path] | None = None,
) -> Catalog:
    """Load every ``*.yml`` artifact file and the profiles.

    ``extra_dirs`` (``irkit triage --definitions DIR``) add artifact files and,
    if a directory has a ``profiles.yml``, profiles; names must not clash.
    """
    dirs = list(artifact_dirs if artifact_dirs is not None else [ARTIFACTS_DIR])
    profile_files = [profiles_file if profiles_file is not None else PROFILES_FILE]
    for extra in extra_dirs or []:
        dirs.append(Path(extra))
        if (Path(extra) / PROFILES_FILE.name).is_file():
            profile_files.append(Path(extra) / PROFILES_FILE.name)
    skip = {p.resolve() for p in profile_files}
    artifacts: dict[str, Artifact] = {}
    origin: dict[str, Path] = {}
    for directory in dirs:
        if not Path(directory).is_dir():
            raise InputError(f"artifact definitions directory {directory} does not exist")
        for path in sorted(Path(directory).rglob("*.yml")):
            if path.resolve() in skip:
                continue
            loaded, data = load_artifact_file(path)
            for index, artifact in enumerate(loaded):
                if artifact.name in artifacts:
                    raise FileInputError(
                        str(path), _item_line(data, index), f"artifacts[{index}].name",
                        f"duplicate artifact name {artifact.name!r} (also in {origin[artifact.name]})",
                    )
                artifacts[artifact.name] = artifact
                origin[artifact.name] = path
    for name, artifact in artifacts.items():
        if artifact.listed_by is None:
            continue
        source_name, _, tag = artifact.listed_by.partition("#")
        source = artifacts.get(source_name)
        if source is None or source.collector != "command" or tag not in source.sections or source.os != artifact.os:
            raise FileInputError(str(origin[name]), None, f"{name}.listed_by",
                                 f"{artifact.listed_by!r}: no {artifact.os} command artifact {source_name!r} "
                                 f"with a section {tag!r}")
        if source.order >= artifact.order:
            raise FileInputError(str(origin[name]), None, f"{name}.listed_by",
                                 f"{source_name} (order {source.order}) must run before {name} (order {artifact.order})")
    profiles: dict[str, Profile] = {}
    for profiles_path in profile_files:
        pdata = load(profiles_path, what="profiles file")
        parsed: ProfilesFile = validate(ProfilesFile, pdata, profiles_path)
        for index, prof in enumerate(parsed.profiles):
            line = _item_line(pdata.get("profiles") if isinstance(pdata, LDict) else None, index)
            if prof.name in profiles:
                raise FileInputError(str(profiles_path), line, f"profiles[{index}].name",
                                     f"duplicate profile {prof.name!r}")
            try:
                names = resolve_patterns(prof.artifacts, artifacts, where=f"profile {prof.name}")
            except InputError as exc:
                raise FileInputError(str(profiles_path), line, f"profiles[{index}].artifacts", str(exc)) from None
            copying = [n for n in names if artifacts[n].collector != "command"]
            if prof.kind == VOLATILE and copying:
                # a snapshot is live state taken in seconds; files stay on disk for the full bundle
                raise FileInputError(str(profiles_path), line, f"profiles[{index}].artifacts",
                                     f"a volatile profile runs commands only, not {', '.join(copying[:3])}")
            profiles[prof.name] = prof
    return Catalog(artifacts=artifacts, profiles=profiles)


def _item_line(node: Any, index: int) -> int | None:
    if isinstance(node, LDict):
        node = node.get("artifacts")
    if isinstance(node, LList) and 0 <= index < len(node):
        return node.item_lines[index]
    return None


# One lock for both caches: the engine's workers (up to `forks` of them) reach their first triage step together,
# and an unlocked functools.cache lets every one of them parse the catalogue at once (~65 ms of CPU each; at
# 200 hosts and 100 forks that was seconds of the volatile snapshot phase, before any host was isolated).
_CATALOG_LOCK = threading.Lock()


@functools.cache
def _builtin_catalog() -> Catalog:
    return load_catalog()


@functools.cache
def _extended_catalog(definitions: tuple[str, ...]) -> Catalog:
    return load_catalog(extra_dirs=[Path(d) for d in definitions])


def builtin_catalog() -> Catalog:
    """The shipped catalogue (package data, immutable), loaded once per process (by one thread)."""
    with _CATALOG_LOCK:
        return _builtin_catalog()


def extended_catalog(definitions: tuple[str, ...]) -> Catalog:
    """The shipped catalogue plus extra definition directories, loaded once per process and set of dirs."""
    with _CATALOG_LOCK:
        return _extended_catalog(definitions)
