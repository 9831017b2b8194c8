"""Restoring declared outputs: a ``.tar.zst`` archive unpacked into a workspace, confined.

`unpack_outputs` checks every member before it touches the disk and refuses (`ArchiveError`,
extracting nothing further) absolute paths, ``..`` components, hardlinks to anything but a
file extracted earlier, device files and fifos, paths through a link that leaves the
workspace, and:

- **links planted by the archive are never followed while extracting.** Symbolic links are
  created last, after every file and folder, so no later member can be written through one;
  once all are placed, every link is resolved against the real workspace, and if any resolves
  outside it (a chain such as ``dist -> u1/outside``, ``u1 -> k/..``, ``k -> .``) every link
  of the archive is removed again and the archive refused;
- **only declared outputs:** with ``allowed`` (the producer's ``outputs=`` patterns) a member
  that no pattern covers is refused, so a crafted archive cannot replace ``ciflow.py``;
- **bounded size:** regular files may add up to at most ``max_bytes`` (the size the producer
  recorded) and never more than `max_unpacked` (``CIFLOW_MAX_UNPACKED_BYTES``, default
  `DEFAULT_MAX_UNPACKED` = 20 GiB); the bound is checked from each member's header before its
  bytes are written.

A file is written under a temporary name and renamed only when complete, so a failure never
leaves a partial file under its final name. Members extracted before a refused one stay.
Python's ``tarfile.data_filter`` is applied as a second check where it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, cast

from .archive import (
    _CHUNK,
    ArchiveError,
    _forget_members,
    _inside,
    _match,
    _may_match_below,
    _pattern_parts,
)

__all__ = ["DEFAULT_MAX_UNPACKED", "max_unpacked", "unpack_outputs"]

#: the most bytes of files one archive may unpack to, unless CIFLOW_MAX_UNPACKED_BYTES says
DEFAULT_MAX_UNPACKED = 20 << 30


def max_unpacked() -> int:
    """The bound on one archive's unpacked bytes (``CIFLOW_MAX_UNPACKED_BYTES`` overrides)."""
    raw = os.environ.get("CIFLOW_MAX_UNPACKED_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_UNPACKED
    try:
        value = int(raw)
    except ValueError:
        raise ArchiveError(
            f"CIFLOW_MAX_UNPACKED_BYTES={raw!r} is not a number of bytes; set it to e.g. 1073741824"
        ) from None
    if value <= 0:
        raise ArchiveError(f"CIFLOW_MAX_UNPACKED_BYTES must be > 0, not {value}")
    return value


def unpack_outputs(
    src: Path,
    workdir: Path,
    *,
    expected_sha256: str | None,
    allowed: Sequence[str] | None = None,
    max_bytes: int | None = None,
) -> list[Path]:
    """Restore the ``.tar.zst`` archive ``src`` into ``workdir``; return the paths written.

    With ``expected_sha256`` the archive is hashed first (streamed) and refused on mismatch
    before anything is extracted; ``allowed`` (output patterns) and ``max_bytes`` confine it
    as the module docstring says. Raises `ArchiveError`.
    """
    import pyzstd

    src = Path(src)
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        root_real = Path(os.path.realpath(workdir, strict=True))
        raw = open(src, "rb")  # closed by the with below
    except OSError as exc:
        raise ArchiveError(f"cannot unpack output archive {src}: {exc}") from None
    with raw:
        if expected_sha256 is not None:
            got = _sha256_of(raw, src)
            if got != expected_sha256.lower():
                raise ArchiveError(
                    f"output archive {src} is corrupted: sha256 mismatch (expected "
                    f"{expected_sha256[:12]}…, got {got[:12]}…); nothing was extracted"
                )
            raw.seek(0)
        extracted: list[Path] = []
        limit = max_unpacked() if max_bytes is None else min(max_bytes, max_unpacked())
        patterns = None if allowed is None else [_pattern_parts(p) for p in allowed]
        state = _Unpack(src, workdir, root_real, patterns, limit)
        try:
            with (
                pyzstd.ZstdFile(raw, "r") as zf,
                tarfile.open(fileobj=cast(IO[bytes], zf), mode="r|", bufsize=_CHUNK) as tar,
            ):
                while (member := tar.next()) is not None:
                    _forget_members(tar)
                    path = state.extract(tar, member)
                    if path is not None:
                        extracted.append(path)
                _check_end(tar)
            extracted.extend(state.place_links())
        except (tarfile.TarError, pyzstd.ZstdError, EOFError) as exc:
            raise ArchiveError(f"output archive {src} is damaged: {exc}") from None
    return extracted


def _sha256_of(fh: IO[bytes], src: Path) -> str:
    h = hashlib.sha256()
    try:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    except OSError as exc:
        raise ArchiveError(f"cannot read output archive {src}: {exc}") from None
    return h.hexdigest()


def _check_end(tar: tarfile.TarFile) -> None:
    """After the last member only zero padding may follow (else a header was damaged)."""
    stream: Any = tar.fileobj
    while chunk := stream.read(_CHUNK):
        if chunk.strip(b"\x00"):
            raise tarfile.ReadError("a member header is damaged (data after the end marker)")


class _Unpack:
    """Member-by-member checks and extraction for one archive."""

    def __init__(
        self,
        src: Path,
        workdir: Path,
        root_real: Path,
        patterns: list[list[str]] | None,
        limit: int,
    ) -> None:
        self.src = src
        self.workdir = workdir
        self.root = root_real
        self.patterns = patterns
        self.limit = limit
        self.written = 0  # bytes of regular files so far
        self.files: dict[str, Path] = {}  # regular files extracted so far, for hardlinks
        self.links: list[tuple[tarfile.TarInfo, Path, list[str]]] = []  # placed last

    def covered(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        """Refuse a member the producer's output patterns do not cover."""
        if self.patterns is None:
            return
        for pat in self.patterns:
            if any(_match(pat, parts[:n]) for n in range(1, len(parts) + 1)):
                return
            if member.isdir() and _may_match_below(pat, parts):
                return
        raise self.refuse(member, "it is not one of the producing module's declared outputs")

    def count(self, member: tarfile.TarInfo) -> None:
        self.written += member.size
        if self.written > self.limit:
            raise self.refuse(
                member,
                f"the archive unpacks to more than {self.limit} bytes (its recorded size or "
                "CIFLOW_MAX_UNPACKED_BYTES)",
            )

    def place_links(self) -> list[Path]:
        """Create the archive's symlinks, then check that every one stays in the workspace."""
        placed: list[Path] = []
        try:
            for member, final, _ in self.links:
                self.check_target(member, final)
                self.place(final, _symlink_maker(member.linkname))
                placed.append(final)
                with contextlib.suppress(NotImplementedError, OSError):
                    os.utime(final, (member.mtime, member.mtime), follow_symlinks=False)
            for member, final, _ in self.links:
                real = os.path.realpath(final)
                if not _inside(real, str(self.root)):
                    raise self.refuse(
                        member,
                        f"with the archive's other links it resolves to {real}, outside "
                        "the workspace; no link of the archive was kept",
                    )
        except BaseException:
            for path in placed:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        return [self.workdir.joinpath(*parts) for _, _, parts in self.links]

    def refuse(self, member: tarfile.TarInfo, reason: str) -> ArchiveError:
        return ArchiveError(
            f"refusing to extract {member.name!r} from {self.src}: {reason}; "
            "nothing further was extracted"
        )

    def extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Path | None:
        parts = self.parts(member, member.name, "path")
        if not parts:
            if member.isdir():
                return None  # "." or "./": the workspace itself
            raise self.refuse(member, "empty name")
        rel = "/".join(parts)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise self.refuse(
                member,
                f"it is a {_member_kind(member)}; only files, directories and links can be outputs",
            )
        self.covered(member, parts)
        source: Path | None = None
        if member.issym():
            self.check_symlink(member, parts)
        elif member.islnk():
            source = self.link_source(member)
        elif member.isreg():
            self.count(member)
        try:
            parent = self.parent(member, parts[:-1])  # creates only checked folders
            final = parent / parts[-1]
            if member.issym():
                self.links.append((member, final, parts))  # placed after everything else
                return None
            self.check_target(member, final)
            if hasattr(tarfile, "data_filter"):  # Python's own checks, as a second opinion
                try:
                    tarfile.data_filter(member, str(self.root))
                except tarfile.TarError as exc:  # FilterError
                    raise self.refuse(member, str(exc)) from None
            if member.isdir():
                if not os.path.isdir(final):
                    os.mkdir(final)
                    os.chmod(final, (member.mode & 0o777) | 0o700)
            elif member.isreg():
                self.write_file(tar, member, final)
                self.files[rel] = final
            elif source is not None:
                link_source = source
                self.place(final, lambda tmp: os.link(link_source, tmp, follow_symlinks=False))
        except OSError as exc:
            raise ArchiveError(
                f"cannot extract {member.name!r} from {self.src}: {exc}; nothing further was "
                "extracted"
            ) from None
        return self.workdir.joinpath(*parts)

    def parts(self, member: tarfile.TarInfo, name: str, what: str) -> list[str]:
        """Check a member path (or hardlink target) and split it into components."""
        if "\x00" in name:
            raise self.refuse(member, f"NUL byte in the {what}")
        if name.startswith("/") or os.path.isabs(name) or (os.sep != "/" and ":" in name):
            raise self.refuse(member, f"absolute {what} {name!r}")
        if os.sep != "/" and os.sep in name:
            raise self.refuse(member, f"{os.sep!r} in the {what}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, f"'..' in the {what} would leave the workspace")
        return parts

    def check_symlink(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        target = member.linkname
        if not target:
            raise self.refuse(member, "symlink with an empty target")
        if target.startswith("/") or os.path.isabs(target) or "\x00" in target:
            raise self.refuse(member, f"symlink to the absolute path {target!r}")
        lexical = os.path.normpath(os.path.join(*parts[:-1], target) if parts[:-1] else target)
        real = os.path.realpath(os.path.join(self.root, *parts[:-1], target))
        if lexical == ".." or lexical.startswith("../") or not _inside(real, str(self.root)):
            raise self.refuse(member, f"symlink to {target!r} points outside the workspace")

    def parent(self, member: tarfile.TarInfo, parts: list[str]) -> Path:
        """Create the member's parent folders safely; return the real parent path."""
        current = self.root
        for i, part in enumerate(parts):
            path = current / part
            shown = "/".join(parts[: i + 1])
            if os.path.islink(path):
                real = os.path.realpath(path)
                if not _inside(real, str(self.root)):
                    raise self.refuse(
                        member, f"{shown} is a symlink to {real}, outside the workspace"
                    )
                if not os.path.isdir(real):
                    raise self.refuse(member, f"{shown} is not a directory")
                current = Path(real)
            elif os.path.lexists(path):
                if not os.path.isdir(path):
                    raise self.refuse(member, f"{shown} is not a directory")
                current = path
            else:
                os.mkdir(path)
                current = path
        return current

    def check_target(self, member: tarfile.TarInfo, final: Path) -> None:
        if os.path.islink(final):
            real = os.path.realpath(final)
            if not _inside(real, str(self.root)):
                raise self.refuse(
                    member, f"it would replace a symlink to {real}, outside the workspace"
                )
        elif os.path.isdir(final) and not member.isdir():
            raise self.refuse(member, "a directory is in the way")

    def link_source(self, member: tarfile.TarInfo) -> Path:
        parts = self.parts(member, member.linkname, "hardlink target")
        source = self.files.get("/".join(parts))
        if source is None or os.path.islink(source) or not os.path.isfile(source):
            raise self.refuse(
                member,
                f"hardlink to {member.linkname!r}, which is not a file extracted earlier "
                "from this archive",
            )
        return source

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, final: Path) -> None:
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise self.refuse(member, "no data")
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        try:
            with open(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
            os.chmod(tmp, member.mode & 0o777)
            os.utime(tmp, (member.mtime, member.mtime))
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def place(self, final: Path, make: Callable[[Path], None]) -> None:
        """Create a link under a temporary name with ``make(tmp)``, then rename it to final."""
        for attempt in range(100):
            tmp = final.with_name(f".{final.name}.{os.getpid()}.{attempt}.part")
            try:
                make(tmp)
            except FileExistsError:
                continue
            try:
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return
        raise FileExistsError(f"no free temporary name next to {final}")


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.isfifo():
        return "fifo"
    if member.ischr() or member.isblk():
        return "device file"
    return f"member of unsupported type {member.type!r}"


def _symlink_maker(target: str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        os.symlink(target, tmp)

    return make
