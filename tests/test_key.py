"""Cache keys: what they are made of, that they are stable, and the miss reasons."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import ciflow
from ciflow.cache.key import FORMAT, KeyParts, code_digest, key_parts, what_changed
from ciflow.model.module import Module


def _parts(**changes: object) -> KeyParts:
    base: dict[str, object] = {
        "module": "m", "code": "c", "spec": "s", "platform": "any",
        "inputs": {"src/a": "f 1", "src/b": "f 2"}, "env": {"MODE": "h1"},
        "deps": {"build": ["r1", "o1"]},
    }  # fmt: skip
    base.update(changes)
    return KeyParts(**base)  # type: ignore[arg-type]


def test_the_key_is_a_digest_of_every_part() -> None:
    parts = _parts()
    assert len(parts.key()) == 64 and parts.key() == _parts().key()
    for change in ({"code": "x"}, {"spec": "x"}, {"platform": "linux/x86_64"},
                   {"inputs": {"src/a": "f 9"}}, {"env": {}}, {"deps": {"build": ["r1", "o2"]}},
                   {"format": FORMAT + 1}):  # fmt: skip
        assert _parts(**change).key() != parts.key(), change
    assert KeyParts.from_json(parts.to_json()) == parts


def test_what_changed_names_each_difference() -> None:
    old = _parts()
    assert what_changed(None, old) == "no entry"
    assert what_changed(old, _parts(code="x")) == "code changed"
    assert what_changed(old, _parts(env={"MODE": "h2"})) == "env MODE changed"
    inputs = {"src/a": "f 9", "src/c": "f 3"}
    assert what_changed(old, _parts(inputs=inputs)) == (
        "input src/a changed, input src/c added, input src/b removed"
    )
    many = {f"f{i}": "x" for i in range(5)}
    assert what_changed(_parts(inputs={}), _parts(inputs=many)).endswith(
        "input f2 added, and 2 more input change(s)"
    )
    assert what_changed(old, _parts(deps={"build": ["r2", "o1"]})) == (
        "dependency build's result changed"
    )
    assert what_changed(old, _parts(platform="linux/arm64")) == (
        "platform changed (any -> linux/arm64)"
    )
    assert what_changed(old, old) == "its entry is gone"


def _load(path: Path, source: str) -> Callable[..., object]:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., object] = module.build
    return fn


def test_the_code_digest_ignores_decorators_comments_and_layout(tmp_path: Path) -> None:
    one = _load(tmp_path / "one.py", "def deco(**kw):\n    return lambda f: f\n\n"
                "@deco(retries=1)\ndef build(x):\n    return x + 1\n")  # fmt: skip
    two = _load(tmp_path / "two.py", "def deco(**kw):\n    return lambda f: f\n\n\n\n"
                "@deco(retries=3, timeout=5)\ndef build(x):  # a comment\n    return (x\n"
                "            + 1)\n")  # fmt: skip
    three = _load(tmp_path / "three.py", "def build(x):\n    return x + 2\n")
    assert code_digest(one) == code_digest(two)
    assert code_digest(one) != code_digest(three)
    no_source = eval("lambda x: x + 1")  # no file to read: its bytecode is hashed
    assert len(code_digest(no_source)) == 32


def test_env_values_are_hashed_and_platform_counts_only_when_required() -> None:
    mod = Module(lambda: None, name="m", env=["MODE"], depends_on=["d"], cache=True)
    a = key_parts(mod, (), root=Path("."), environ={"MODE": "secret-value"}, deps={})
    b = key_parts(mod, (), root=Path("."), environ={}, deps={})
    assert a.env != b.env and "secret-value" not in a.to_json()
    assert a.platform == "any" and a.deps == {"d": ["none", "none"]}
    pinned = Module(lambda: None, name="p", depends_on=["d"], cache=True,
                    requires=ciflow.Requires(os="linux"))  # fmt: skip
    assert key_parts(pinned, (), root=Path("."), environ={}, deps={}).platform.startswith("linux/")
