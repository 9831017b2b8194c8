"""Content digests of inputs and outputs: globs, folders, excludes, links never followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ciflow.cache.digest import digest_bytes, input_digests, outputs_digest
from ciflow.errors import UsageError

_FILES = {"src/a.py": "a", "src/pkg/b.py": "b", "src/pkg/c.txt": "c",
          "src/node_modules/x.py": "x", ".git/config": "g", "top.py": "t"}  # fmt: skip


def _tree(root: Path) -> None:
    for rel, text in _FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_globs_folders_and_excludes(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert list(input_digests(tmp_path, ["src/**/*.py", "!src/node_modules"])) == [
        "src/a.py", "src/pkg/b.py",
    ]  # fmt: skip
    assert list(input_digests(tmp_path, ["src/pkg"])) == ["src/pkg/b.py", "src/pkg/c.txt"]
    assert list(input_digests(tmp_path, ["**/*.py"])) == [
        "src/a.py", "src/node_modules/x.py", "src/pkg/b.py", "top.py",
    ]  # fmt: skip
    assert ".git/config" not in input_digests(tmp_path, ["**"])  # never an input
    assert input_digests(tmp_path, ["missing.txt"]) == {}


def test_digests_follow_content_not_paths_or_times(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _tree(one)
    _tree(two)
    os.utime(two / "top.py", (0, 0))
    assert input_digests(one, ["**"]) == input_digests(two, ["**"])
    assert outputs_digest(one, ["src"]) == outputs_digest(two, ["src"])
    (two / "src" / "a.py").write_text("changed")
    assert outputs_digest(one, ["src"]) != outputs_digest(two, ["src"])
    (two / "src" / "a.py").write_text("a")
    (two / "src" / "a.py").chmod(0o755)  # the executable bit changes what a file does
    assert input_digests(one, ["src/a.py"]) != input_digests(two, ["src/a.py"])
    assert digest_bytes(None) == digest_bytes(b"null") and len(digest_bytes(b"1")) == 32


def test_a_link_is_hashed_as_a_link_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    assert input_digests(root, ["link", "link/**"]) == {"link": f"l {outside}"}


def test_a_bad_pattern_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"invalid input pattern '\.\./x'"):
        input_digests(tmp_path, ["../x"])
    with pytest.raises(UsageError, match="invalid input pattern '/etc'"):
        input_digests(tmp_path, ["/etc"])
