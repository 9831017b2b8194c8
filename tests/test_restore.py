"""Restoring outputs: confined to the workspace, to declared outputs, and to a size."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from test_archive import make_archive, member, sha256_file

from ciflow.distributed.archive import ArchiveError, pack_outputs
from ciflow.distributed.restore import DEFAULT_MAX_UNPACKED, max_unpacked, unpack_outputs


def link(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    return member(name, type=tarfile.SYMTYPE, linkname=target)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    (tmp_path / "dest").mkdir()
    return tmp_path / "dest"


def _no_link_leaves(dest: Path) -> None:
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                real = os.path.realpath(path)
                assert real == str(dest.resolve()) or real.startswith(f"{dest.resolve()}/"), path


@pytest.mark.parametrize(
    "links",
    [
        # each link passes a check made when it alone is extracted; together they leave
        [("dist", "u1/outside"), ("u1", "k/.."), ("k", ".")],
        [
            ("a", "b/c/d/e/f/g/.."),
            ("b", "."),
            ("c", "."),
            ("d", "."),
            ("e", "."),
            ("f", "."),
            ("g", ".."),
        ],  # fmt: skip
    ],
)
def test_a_chain_of_links_cannot_lead_outside_the_workspace(
    dest: Path, tmp_path: Path, links: list[tuple[str, str]]
) -> None:
    archive = make_archive(tmp_path / "a.tar.zst", [link(n, t) for n, t in links])
    with pytest.raises(ArchiveError, match="outside the workspace"):
        unpack_outputs(archive, dest, expected_sha256=sha256_file(archive))
    _no_link_leaves(dest)
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]


def test_a_file_is_never_written_through_a_link_of_the_same_archive(
    dest: Path, tmp_path: Path
) -> None:
    members = [link("out", "../outside"), member("out/secret", b"overwritten")]
    archive = make_archive(tmp_path / "a.tar.zst", members)
    with pytest.raises(ArchiveError):
        unpack_outputs(archive, dest, expected_sha256=None)
    assert (tmp_path / "outside" / "secret").read_text() == "keep"


def test_links_inside_the_workspace_still_restore(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "dist").mkdir(parents=True)
    (ws / "dist" / "app.whl").write_text("wheel")
    (ws / "dist" / "latest.whl").symlink_to("app.whl")
    info = pack_outputs(ws, ["dist/*"], tmp_path / "o.tar.zst")
    dest = tmp_path / "dest"
    unpack_outputs(info.path, dest, expected_sha256=info.sha256, allowed=["dist/*"])
    assert (dest / "dist" / "latest.whl").read_text() == "wheel"
    assert os.readlink(dest / "dist" / "latest.whl") == "app.whl"


def test_only_the_producers_declared_outputs_are_restored(dest: Path, tmp_path: Path) -> None:
    archive = make_archive(
        tmp_path / "a.tar.zst", [member("dist/app.whl", b"w"), member("ciflow.py", b"evil")]
    )
    with pytest.raises(ArchiveError, match="ciflow.py.*not one of the producing module's"):
        unpack_outputs(archive, dest, expected_sha256=None, allowed=["dist/*.whl"])
    assert not (dest / "ciflow.py").exists()
    ok = make_archive(tmp_path / "b.tar.zst", [member("build", type=tarfile.DIRTYPE),
                                               member("build/x/y.txt", b"y")])  # fmt: skip
    unpack_outputs(ok, dest, expected_sha256=None, allowed=["build"])  # a folder brings all
    assert (dest / "build" / "x" / "y.txt").read_bytes() == b"y"


def test_an_archive_larger_than_recorded_is_refused_before_its_bytes_are_written(
    dest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive(tmp_path / "a.tar.zst", [member("a", b"x" * 10), member("b", b"y" * 10)])
    with pytest.raises(ArchiveError, match="more than 15 bytes"):
        unpack_outputs(archive, dest, expected_sha256=None, max_bytes=15)
    assert not (dest / "b").exists()
    monkeypatch.setenv("CIFLOW_MAX_UNPACKED_BYTES", "12")
    assert max_unpacked() == 12
    with pytest.raises(ArchiveError, match="more than 12 bytes"):
        unpack_outputs(archive, dest, expected_sha256=None)  # no recorded size: the default
    monkeypatch.setenv("CIFLOW_MAX_UNPACKED_BYTES", "lots")
    with pytest.raises(ArchiveError, match="not a number of bytes"):
        max_unpacked()
    monkeypatch.delenv("CIFLOW_MAX_UNPACKED_BYTES")
    assert max_unpacked() == DEFAULT_MAX_UNPACKED == 20 << 30
