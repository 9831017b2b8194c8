"""Declared outputs as streamed zstd-compressed tar archives (docs/architecture.md).

`pack_outputs` expands a module's output patterns inside its workspace and streams the files
into a ``.tar.zst`` file; `restore.unpack_outputs` restores such an archive into another
workspace. Both stream in chunks, so moving a 1 GiB output needs a few MiB of memory.

Pattern rules (relative to the workspace, ``/``-separated)::

    dist/*.whl    ``*``, ``?`` and ``[...]`` match within one path component (dotfiles included)
    src/**        ``**`` as a whole component matches any number of components, zero included
    build         a matched directory brings everything below it

Packing never follows a symlink while walking: a symlink that matches is stored as a link, and
only if it points inside the workspace (absolute targets inside are rewritten as relative);
otherwise `ArchiveError`. Fifos, sockets and devices are refused too. Members store relative
paths, permission bits (``0o777``) and mtimes; owners are not stored.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from ..errors import CiflowError, ExitCode

__all__ = ["ArchiveError", "ArchiveInfo", "pack_outputs"]

_CHUNK = 1024 * 1024
_MAGIC_CHARS = frozenset("*?[")


class ArchiveError(CiflowError):
    """Outputs could not be packed or an archive was refused; the message names the member."""

    exit_code = ExitCode.FAILED


@dataclass(frozen=True)
class ArchiveInfo:
    """What `pack_outputs` wrote."""

    #: the archive file
    path: Path
    #: SHA-256 (hex) of the compressed archive file
    sha256: str
    #: size of the compressed archive file in bytes
    size: int
    #: members stored: regular files, symlinks and empty directories
    files: int
    #: uncompressed bytes of the regular files stored
    file_bytes: int
    #: per pattern, how many members it matched (0: the pattern matched nothing)
    matches: dict[str, int] = field(default_factory=dict)

    @property
    def unmatched(self) -> list[str]:
        """The patterns that matched nothing."""
        return [p for p, n in self.matches.items() if n == 0]


@dataclass(frozen=True)
class _Entry:
    rel: str  # posix path relative to the workspace
    path: Path  # where it is on disk (lexically under the workspace)
    kind: str  # "file" | "dir" | "symlink"
    linkname: str = ""


# --------------------------------------------------------------------------- packing


def pack_outputs(
    workdir: Path, patterns: Sequence[str], dest: Path, *, level: int = 3, durable: bool = True
) -> ArchiveInfo:
    """Stream the files matching ``patterns`` under ``workdir`` into the ``.tar.zst`` ``dest``.

    ``dest`` appears complete or not at all (written under a temporary name, then renamed);
    ``durable=False`` skips the fsync, for an archive copied elsewhere and then deleted.
    A pattern that matches nothing is fine (see `ArchiveInfo.matches`); no match at all gives
    an empty archive. Raises `ArchiveError`.
    """
    import pyzstd

    dest = Path(dest)
    entries, matches = _expand(
        Path(workdir), [patterns] if isinstance(patterns, str) else patterns, dest
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    file_bytes = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = _HashingWriter(raw)
            options: dict[int, int] = {
                pyzstd.CParameter.compressionLevel: level,
                pyzstd.CParameter.checksumFlag: 1,
            }
            with (
                pyzstd.ZstdFile(cast(BinaryIO, sink), "w", level_or_option=options) as zf,
                tarfile.open(
                    fileobj=cast(IO[bytes], zf),
                    mode="w|",
                    format=tarfile.PAX_FORMAT,
                    bufsize=_CHUNK,
                ) as tar,
            ):
                for rel in sorted(entries):
                    file_bytes += _add(tar, entries[rel])
                    _forget_members(tar)
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArchiveError(f"cannot write output archive {dest}: {exc}") from None
        raise
    return ArchiveInfo(
        path=dest,
        sha256=sink.sha256.hexdigest(),
        size=sink.size,
        files=len(entries),
        file_bytes=file_bytes,
        matches=matches,
    )


def _expand(
    workdir: Path, patterns: Sequence[str], dest: Path
) -> tuple[dict[str, _Entry], dict[str, int]]:
    """What ``patterns`` match in ``workdir`` (by relative path), and how many each matched."""
    try:
        root_real = Path(os.path.realpath(workdir, strict=True))
    except OSError as exc:
        raise ArchiveError(f"cannot pack outputs: workspace {workdir} is missing ({exc})") from None
    if not root_real.is_dir():
        raise ArchiveError(f"cannot pack outputs: workspace {workdir} is not a directory")
    walker = _Walker(workdir, root_real, skip={os.path.realpath(dest)})
    entries: dict[str, _Entry] = {}
    matches: dict[str, int] = {}
    for pattern in patterns:
        found = walker.expand(pattern)
        matches[pattern] = len(found)
        for entry in found:
            entries.setdefault(entry.rel, entry)
    return entries, matches


def _forget_members(tar: tarfile.TarFile) -> None:
    """Drop the TarInfo list tarfile keeps of every member, so memory stays flat."""
    members = getattr(tar, "members", None)
    if isinstance(members, list):
        members.clear()


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.raw.closed


def _pattern_parts(pattern: str) -> list[str]:
    """Split and check one output pattern; it must stay inside the workspace."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise ArchiveError(f"invalid output pattern {pattern!r}: empty")
    if pattern.startswith("/") or os.path.isabs(pattern) or "\x00" in pattern:
        raise ArchiveError(
            f"invalid output pattern {pattern!r}: outputs are paths relative to the workspace"
        )
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"invalid output pattern {pattern!r}: '..' would leave the workspace")
    if not parts:
        raise ArchiveError(f"invalid output pattern {pattern!r}: names the whole workspace")
    return parts


def _has_magic(part: str) -> bool:
    return part == "**" or any(c in _MAGIC_CHARS for c in part)


def _match(pat: Sequence[str], path: Sequence[str]) -> bool:
    """Whether path components ``path`` match pattern components ``pat``."""
    if not pat:
        return not path
    if pat[0] == "**":
        return any(_match(pat[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], pat[0]) and _match(pat[1:], path[1:])


def _may_match_below(pat: Sequence[str], path: Sequence[str]) -> bool:
    """Whether something below directory ``path`` could match ``pat``."""
    for i, part in enumerate(path):
        if i >= len(pat):
            return False
        if pat[i] == "**":
            return True
        if not fnmatchcase(part, pat[i]):
            return False
    return len(path) < len(pat)


def _inside(path: str, root: str) -> bool:
    return path == root or os.path.commonpath([path, root]) == root


class _Walker:
    """Expands patterns in one workspace; never follows a symlink while walking."""

    def __init__(self, workdir: Path, root_real: Path, skip: set[str]) -> None:
        self.workdir = workdir
        self.lexical_root = os.path.abspath(workdir)
        self.root = str(root_real)
        self.skip = skip

    def expand(self, pattern: str) -> list[_Entry]:
        """The entries one pattern selects, in a stable order."""
        parts = _pattern_parts(pattern)
        literal = 0
        while literal < len(parts) and not _has_magic(parts[literal]):
            literal += 1
        base_parts, rest = parts[:literal], parts[literal:]
        base = self.workdir.joinpath(*base_parts)
        # the literal leading folders may be symlinks, as long as they stay inside
        through = os.path.realpath(base if rest else base.parent)
        if not _inside(through, self.root):
            raise ArchiveError(
                f"output pattern {pattern!r} reaches {through} through a symlink, outside the "
                "workspace"
            )
        found: list[_Entry] = []
        if not rest:
            if os.path.lexists(base):
                self.add_tree(base, "/".join(base_parts), found)
        elif base.is_dir():
            if _match(rest, ()):
                self.add_tree(base, "/".join(base_parts), found)
            else:
                self.visit(base, base_parts, rest, (), found)
        return found

    def visit(
        self,
        directory: Path,
        base_parts: list[str],
        rest: list[str],
        sub: tuple[str, ...],
        found: list[_Entry],
    ) -> None:
        for entry in _scandir(directory):
            here = (*sub, entry.name)
            path = Path(entry.path)
            if _match(rest, here):
                self.add_tree(path, "/".join((*base_parts, *here)), found)
            elif entry.is_dir(follow_symlinks=False) and _may_match_below(rest, here):
                self.visit(path, base_parts, rest, here, found)

    def add_tree(self, path: Path, rel: str, found: list[_Entry]) -> None:
        """Add ``path`` (a file, a symlink or a whole directory) to ``found``."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ArchiveError(f"cannot read output {rel}: {exc}") from None
        if stat.S_ISLNK(st.st_mode):
            found.append(_Entry(rel, path, "symlink", self.link_target(path, rel)))
        elif stat.S_ISREG(st.st_mode):
            if os.path.realpath(path) not in self.skip:  # the archive being written
                found.append(_Entry(rel, path, "file"))
        elif stat.S_ISDIR(st.st_mode):
            children = _scandir(path)
            if not children:
                found.append(_Entry(rel, path, "dir"))
            for child in children:
                self.add_tree(Path(child.path), f"{rel}/{child.name}", found)
        else:
            raise ArchiveError(
                f"cannot pack output {rel}: it is a {_kind(st.st_mode)}; outputs can be "
                "regular files, directories and symlinks"
            )

    def link_target(self, path: Path, rel: str) -> str:
        """The target to store for symlink ``path`` (relative); refuse one leading outside."""
        target = os.readlink(path)
        rel_dir = os.path.dirname(rel)
        outside = ArchiveError(
            f"cannot pack output {rel}: it is a symlink to {target}, outside the workspace; "
            "only symlinks that stay inside the workspace can be outputs"
        )
        if os.path.isabs(target):
            norm = os.path.normpath(target)
            for base in (self.lexical_root, self.root):
                if _inside(norm, base):
                    target = os.path.relpath(os.path.relpath(norm, base), rel_dir or ".")
                    break
            else:
                raise outside
        lexical = os.path.normpath(os.path.join(rel_dir, target))
        real = os.path.realpath(os.path.join(os.path.dirname(path), target))
        if lexical == ".." or lexical.startswith("../") or not _inside(real, self.root):
            raise outside
        return target


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise ArchiveError(f"cannot read output directory {directory}: {exc}") from None


def _add(tar: tarfile.TarFile, entry: _Entry) -> int:
    """Write one member; return the file bytes it stored."""
    info = tarfile.TarInfo(entry.rel)
    try:
        if entry.kind == "file":
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            with open(os.open(entry.path, flags), "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ArchiveError(f"cannot pack output {entry.rel}: it changed while packing")
                info.size = st.st_size
                info.mode = stat.S_IMODE(st.st_mode) & 0o777
                info.mtime = st.st_mtime
                tar.addfile(info, fh)
                return st.st_size
        st = os.lstat(entry.path)
        info.mode = stat.S_IMODE(st.st_mode) & 0o777
        info.mtime = st.st_mtime
        if entry.kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = entry.linkname
        else:
            info.type = tarfile.DIRTYPE
        tar.addfile(info)
        return 0
    except OSError as exc:
        raise ArchiveError(f"cannot pack output {entry.rel}: {exc}") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"
