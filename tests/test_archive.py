"""Declared outputs as zstd tar streams: globs, metadata, path-escape attacks, bounded memory."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest
import pyzstd

from ciflow.distributed.archive import ArchiveError, ArchiveInfo, pack_outputs
from ciflow.distributed.restore import unpack_outputs
from ciflow.errors import CiflowError

ROOT = Path(__file__).resolve().parents[1]
Member = tuple[tarfile.TarInfo, bytes | None]


def write(path: Path, data: bytes | str = b"", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def names(archive: Path) -> list[str]:
    with pyzstd.ZstdFile(archive) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
        return [m.name for m in tar]


def tree(root: Path) -> list[str]:
    """Every path under root (files, links, folders), relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def member(name: str, data: bytes | None = None, **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else 0
    info.mtime = 1_600_000_000
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def make_archive(path: Path, members: Iterable[Member], fmt: int = tarfile.PAX_FORMAT) -> Path:
    """Craft a .tar.zst with tarfile directly, exactly as given (malicious or not)."""
    with pyzstd.ZstdFile(path, "w") as zf, tarfile.open(fileobj=zf, mode="w|", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace with nested outputs, modes and mtimes."""
    root = tmp_path / "ws"
    write(root / "dist" / "app-1.0-py3-none-any.whl", b"wheel", 0o644)
    write(root / "dist" / "app-1.0.tar.gz", b"sdist", 0o600)
    write(root / "dist" / ".hidden", b"dot")
    write(root / "build" / "bin" / "tool", b"#!/bin/sh\necho hi\n", 0o755)
    write(root / "build" / "lib" / "deep" / "er" / "x.txt", "x")
    write(root / "build" / "lib" / "y.txt", "y")
    write(root / "src" / "main.py", "print()")
    (root / "build" / "empty").mkdir()
    os.utime(root / "build" / "bin" / "tool", (1_600_000_000.5, 1_600_000_000.5))
    return root


# --------------------------------------------------------------------------- packing


def test_round_trip_keeps_content_modes_and_mtimes(ws: Path, tmp_path: Path) -> None:
    info = pack_outputs(ws, ["dist/*", "build"], tmp_path / "out.tar.zst")
    dest = tmp_path / "dest"
    restored = unpack_outputs(info.path, dest, expected_sha256=info.sha256)
    expected = [
        "build/bin/tool",
        "build/empty",
        "build/lib/deep/er/x.txt",
        "build/lib/y.txt",
        "dist/.hidden",
        "dist/app-1.0-py3-none-any.whl",
        "dist/app-1.0.tar.gz",
    ]
    assert [str(p.relative_to(dest)) for p in restored] == expected
    for rel in expected:
        src, out = ws / rel, dest / rel
        assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE(src.stat().st_mode), rel
        if src.is_file():
            assert out.read_bytes() == src.read_bytes()
            assert out.stat().st_mtime == pytest.approx(src.stat().st_mtime, abs=1e-6), rel
    assert (dest / "build" / "bin" / "tool").stat().st_mtime == 1_600_000_000.5
    assert stat.S_IMODE((dest / "dist" / "app-1.0.tar.gz").stat().st_mode) == 0o600
    assert (dest / "build" / "empty").is_dir()
    assert "src" not in os.listdir(dest)


def test_archive_info(ws: Path, tmp_path: Path) -> None:
    info = pack_outputs(ws, ["dist/*.whl", "build/**/*.txt", "nothing/*.so"], tmp_path / "a.tzst")
    assert isinstance(info, ArchiveInfo)
    assert info.path == tmp_path / "a.tzst"
    assert info.sha256 == sha256_file(info.path)
    assert info.size == info.path.stat().st_size
    assert info.files == 3
    assert info.file_bytes == len(b"wheel") + 2
    assert info.matches == {"dist/*.whl": 1, "build/**/*.txt": 2, "nothing/*.so": 0}
    assert info.unmatched == ["nothing/*.so"]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["dist/*.whl"], ["dist/app-1.0-py3-none-any.whl"]),
        (["dist/app-1.0.tar.?z"], ["dist/app-1.0.tar.gz"]),
        (["dist/[.a]*"], ["dist/.hidden", "dist/app-1.0-py3-none-any.whl", "dist/app-1.0.tar.gz"]),
        (["**/*.txt"], ["build/lib/deep/er/x.txt", "build/lib/y.txt"]),
        (["build/**/x.txt"], ["build/lib/deep/er/x.txt"]),
        (["build/*/y.txt", "build/lib/y.txt"], ["build/lib/y.txt"]),
        (["build/lib"], ["build/lib/deep/er/x.txt", "build/lib/y.txt"]),
        (["build/lib/**"], ["build/lib/deep/er/x.txt", "build/lib/y.txt"]),
        (["./src//main.py"], ["src/main.py"]),
        (["*.py"], []),
        (
            ["build/*"],
            ["build/bin/tool", "build/empty", "build/lib/deep/er/x.txt", "build/lib/y.txt"],
        ),
    ],
)
def test_globs(ws: Path, tmp_path: Path, patterns: list[str], expected: list[str]) -> None:
    info = pack_outputs(ws, patterns, tmp_path / "a.tar.zst")
    assert names(info.path) == expected
    assert info.files == len(expected)


def test_no_match_gives_an_empty_archive(ws: Path, tmp_path: Path) -> None:
    info = pack_outputs(ws, ["nope/**", "*.nothing"], tmp_path / "empty.tar.zst")
    assert info.files == 0
    assert info.unmatched == ["nope/**", "*.nothing"]
    assert names(info.path) == []
    assert unpack_outputs(info.path, tmp_path / "dest", expected_sha256=info.sha256) == []
    assert pack_outputs(ws, [], tmp_path / "none.tar.zst").files == 0


def test_archive_inside_the_workspace_does_not_pack_itself(ws: Path) -> None:
    first = pack_outputs(ws, ["**"], ws / "out.tar.zst")
    second = pack_outputs(ws, ["**"], ws / "out.tar.zst")
    assert "out.tar.zst" not in names(second.path)
    assert second.files == first.files
    assert not [p for p in os.listdir(ws) if p.endswith(".part")]


def test_symlinks_inside_the_workspace_are_kept_as_links(ws: Path, tmp_path: Path) -> None:
    os.symlink("lib/y.txt", ws / "build" / "rel-link")
    os.symlink(ws / "dist" / "app-1.0.tar.gz", ws / "build" / "abs-link")
    os.symlink("lib", ws / "build" / "dir-link")
    info = pack_outputs(ws, ["build/*-link", "build/lib", "dist/*.gz"], tmp_path / "a.tar.zst")
    dest = tmp_path / "dest"
    unpack_outputs(info.path, dest, expected_sha256=info.sha256)
    assert os.readlink(dest / "build" / "rel-link") == "lib/y.txt"
    assert os.readlink(dest / "build" / "abs-link") == "../dist/app-1.0.tar.gz"  # made relative
    assert os.readlink(dest / "build" / "dir-link") == "lib"
    assert (dest / "build" / "abs-link").read_bytes() == b"sdist"
    assert (dest / "build" / "dir-link" / "y.txt").read_text() == "y"


def test_symlink_leaving_the_workspace_is_refused(ws: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", ws / "dist" / "abs")
    with pytest.raises(ArchiveError, match=r"dist/abs: it is a symlink to .*outside the workspace"):
        pack_outputs(ws, ["dist/*"], tmp_path / "a.tar.zst")
    os.unlink(ws / "dist" / "abs")
    os.symlink("../../secret", ws / "dist" / "rel")
    with pytest.raises(ArchiveError, match=r"dist/rel: it is a symlink to \.\./\.\./secret"):
        pack_outputs(ws, ["dist"], tmp_path / "a.tar.zst")
    assert not (tmp_path / "a.tar.zst").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def test_walk_does_not_follow_directory_symlinks(ws: Path, tmp_path: Path) -> None:
    write(tmp_path / "elsewhere" / "leak.txt", "leak")
    os.symlink(tmp_path / "elsewhere", ws / "build" / "outside")
    info = pack_outputs(ws, ["**/*.txt"], tmp_path / "a.tar.zst")
    assert not any("leak" in n for n in names(info.path))
    with pytest.raises(ArchiveError, match="outside the workspace"):
        pack_outputs(ws, ["build/*"], tmp_path / "b.tar.zst")  # the link itself matches
    with pytest.raises(ArchiveError, match="through a symlink, outside the workspace"):
        pack_outputs(ws, ["build/outside/*.txt"], tmp_path / "c.tar.zst")


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../x", "dist/../../x", "", "."])
def test_bad_patterns_are_refused(ws: Path, tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ArchiveError, match="invalid output pattern"):
        pack_outputs(ws, [pattern], tmp_path / "a.tar.zst")


def test_special_files_are_refused(ws: Path, tmp_path: Path) -> None:
    os.mkfifo(ws / "build" / "pipe")
    with pytest.raises(ArchiveError, match=r"build/pipe: it is a fifo"):
        pack_outputs(ws, ["build"], tmp_path / "a.tar.zst")


def test_missing_workspace(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="workspace .* is missing"):
        pack_outputs(tmp_path / "nope", ["*"], tmp_path / "a.tar.zst")


def test_archive_error_is_a_ciflow_error() -> None:
    assert issubclass(ArchiveError, CiflowError)
    assert ArchiveError.exit_code == 1


def test_unpack_overwrites_existing_files(ws: Path, tmp_path: Path) -> None:
    info = pack_outputs(ws, ["dist/*.whl"], tmp_path / "a.tar.zst")
    dest = tmp_path / "dest"
    write(dest / "dist" / "app-1.0-py3-none-any.whl", "old")
    unpack_outputs(info.path, dest, expected_sha256=None)
    assert (dest / "dist" / "app-1.0-py3-none-any.whl").read_bytes() == b"wheel"


# --------------------------------------------------------------------------- attacks


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """An empty workspace to extract into; tmp_path/outside is what attacks aim at."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    return dest


def refused(archive: Path, dest: Path, match: str) -> ArchiveError:
    with pytest.raises(ArchiveError, match=match) as info:
        unpack_outputs(archive, dest, expected_sha256=sha256_file(archive))
    assert "\n" not in str(info.value)
    outside = dest.parent / "outside"
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "keep"
    assert not [p for p in tree(dest) if p.endswith(".part")]
    return info.value


def test_absolute_path_is_refused(tmp_path: Path, target: Path) -> None:
    evil = str(tmp_path / "outside" / "evil")
    archive = make_archive(tmp_path / "a.tar.zst", [member(evil, b"x")])
    refused(archive, target, rf"refusing to extract '{evil}' .*: absolute path")
    assert tree(target) == []


@pytest.mark.parametrize("name", ["../outside/evil", "a/../../outside/evil", "./../outside/evil"])
def test_dotdot_is_refused(tmp_path: Path, target: Path, name: str) -> None:
    archive = make_archive(tmp_path / "a.tar.zst", [member(name, b"x")])
    refused(archive, target, r"'\.\.' in the path would leave the workspace")
    assert tree(target) == []


@pytest.mark.parametrize("link", ["ABS", "../outside", "sub/../../outside", "/etc"])
def test_symlink_out_then_file_through_it_is_refused(
    tmp_path: Path, target: Path, link: str
) -> None:
    link = str(tmp_path / "outside") if link == "ABS" else link
    archive = make_archive(
        tmp_path / "a.tar.zst",
        [
            member("ok.txt", b"fine"),
            member("link", type=tarfile.SYMTYPE, linkname=link),
            member("link/evil", b"x"),
            member("later.txt", b"not reached"),
        ],
    )
    error = refused(archive, target, r"refusing to extract 'link' .*symlink to")
    assert "nothing further was extracted" in str(error)
    assert tree(target) == ["ok.txt"]  # extracted before the attack; nothing after it


def test_symlink_through_a_symlink_out_is_refused(tmp_path: Path, target: Path) -> None:
    os.symlink(tmp_path / "outside", target / "pre")  # a link already in the workspace
    archive = make_archive(
        tmp_path / "a.tar.zst", [member("x", type=tarfile.SYMTYPE, linkname="pre/secret")]
    )
    refused(archive, target, "points outside the workspace")
    assert not os.path.lexists(target / "x")


def test_file_through_an_existing_symlink_out_is_refused(tmp_path: Path, target: Path) -> None:
    os.symlink(tmp_path / "outside", target / "pre")
    archive = make_archive(tmp_path / "a.tar.zst", [member("pre/evil", b"x")])
    refused(archive, target, r"pre is a symlink to .*outside, outside the workspace")


def test_overwriting_a_symlink_out_is_refused(tmp_path: Path, target: Path) -> None:
    os.symlink(tmp_path / "outside" / "secret", target / "pre")
    archive = make_archive(tmp_path / "a.tar.zst", [member("pre", b"overwrite")])
    refused(archive, target, "would replace a symlink to .*secret, outside the workspace")
    assert os.readlink(target / "pre") == str(tmp_path / "outside" / "secret")


@pytest.mark.parametrize(
    ("linkname", "match"),
    [
        ("ABS", "absolute hardlink target"),
        ("../outside/secret", r"'\.\.' in the hardlink target"),
        ("pre", "not a file extracted earlier"),
        ("never-extracted", "not a file extracted earlier"),
    ],
)
def test_hardlink_outside_is_refused(
    tmp_path: Path, target: Path, linkname: str, match: str
) -> None:
    os.symlink(tmp_path / "outside" / "secret", target / "pre")
    linkname = str(tmp_path / "outside" / "secret") if linkname == "ABS" else linkname
    archive = make_archive(
        tmp_path / "a.tar.zst", [member("hl", type=tarfile.LNKTYPE, linkname=linkname)]
    )
    refused(archive, target, match)
    assert tree(target) == ["pre"]
    assert os.stat(tmp_path / "outside" / "secret").st_nlink == 1


def test_hardlink_to_an_earlier_member_works(tmp_path: Path, target: Path) -> None:
    archive = make_archive(
        tmp_path / "a.tar.zst",
        [
            member("d/file", b"data"),
            member("copy", type=tarfile.LNKTYPE, linkname="d/file"),
            member("inner", type=tarfile.SYMTYPE, linkname="d/file"),
        ],
    )
    unpack_outputs(archive, target, expected_sha256=None)
    assert (target / "copy").read_bytes() == b"data"
    assert os.stat(target / "copy").st_ino == os.stat(target / "d" / "file").st_ino
    assert (target / "inner").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        (tarfile.CHRTYPE, "it is a device file"),
        (tarfile.BLKTYPE, "it is a device file"),
        (tarfile.FIFOTYPE, "it is a fifo"),
    ],
)
def test_special_members_are_refused(tmp_path: Path, target: Path, kind: bytes, match: str) -> None:
    archive = make_archive(
        tmp_path / "a.tar.zst", [member("dev", type=kind, devmajor=1, devminor=3)]
    )
    refused(archive, target, match)
    assert tree(target) == []


def test_sha256_mismatch_is_refused_before_extracting(ws: Path, tmp_path: Path) -> None:
    info = pack_outputs(ws, ["dist", "build"], tmp_path / "a.tar.zst")
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="sha256 mismatch .*nothing was extracted"):
        unpack_outputs(info.path, dest, expected_sha256="0" * 64)
    assert tree(dest) == []


def test_truncated_archive_leaves_no_partial_file(tmp_path: Path) -> None:
    write(tmp_path / "ws" / "small.txt", "small")
    write(tmp_path / "ws" / "zbig.bin", os.urandom(3 << 20))
    info = pack_outputs(tmp_path / "ws", ["*"], tmp_path / "a.tar.zst")
    data = info.path.read_bytes()
    cut = write(tmp_path / "cut.tar.zst", data[: len(data) // 2])
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError, match="is damaged"):
        unpack_outputs(cut, dest, expected_sha256=None)
    assert tree(dest) == ["small.txt"]  # zbig.bin neither complete nor partial


def test_damaged_archive_without_checksum_is_detected(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in "abc":
            info, data = member(name, name.encode())
            tar.addfile(info, io.BytesIO(data or b""))
    damaged = bytearray(raw.getvalue())
    damaged[1024 + 148] ^= 0x01  # the checksum field of the second header
    archive = write(tmp_path / "a.tar.zst", pyzstd.compress(bytes(damaged)))
    with pytest.raises(ArchiveError, match="is damaged: a member header is damaged"):
        unpack_outputs(archive, tmp_path / "dest", expected_sha256=None)
    garbage = write(tmp_path / "g.tar.zst", pyzstd.compress(raw.getvalue()) + b"garbage!")
    with pytest.raises(ArchiveError, match="is damaged"):
        unpack_outputs(garbage, tmp_path / "dest2", expected_sha256=None)
    not_zstd = write(tmp_path / "n.tar.zst", raw.getvalue())
    with pytest.raises(ArchiveError, match="is damaged"):
        unpack_outputs(not_zstd, tmp_path / "dest3", expected_sha256=None)


def test_member_named_dot_is_the_workspace(tmp_path: Path, target: Path) -> None:
    archive = make_archive(
        tmp_path / "a.tar.zst", [member("./", type=tarfile.DIRTYPE), member("./x", b"x")]
    )
    assert unpack_outputs(archive, target, expected_sha256=None) == [target / "x"]


# --------------------------------------------------------------------------- memory

CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from ciflow.distributed.archive import pack_outputs
    from ciflow.distributed.restore import unpack_outputs

    root = Path(sys.argv[1])
    big = root / "ws" / "out" / "big.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as fh:
        for _ in range(200):
            fh.write(os.urandom(1 << 20))  # incompressible: the archive is as large
    info = pack_outputs(root / "ws", ["out/*.bin"], root / "out.tar.zst")
    unpack_outputs(root / "out.tar.zst", root / "dest", expected_sha256=info.sha256)
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) // 1024, info.size)
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_moving_a_large_output_keeps_memory_bounded(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    peak_mib, archive_size = map(int, result.stdout.split())
    assert archive_size > 200 << 20
    assert peak_mib < 100, f"peak RSS {peak_mib} MiB"
    src, out = tmp_path / "ws" / "out" / "big.bin", tmp_path / "dest" / "out" / "big.bin"
    assert out.stat().st_size == 200 << 20
    assert sha256_file(out) == sha256_file(src)
