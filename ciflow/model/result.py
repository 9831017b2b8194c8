"""Module results: validated and serialized through the module's return annotation.

A result travels as JSON (never pickle). `ResultType` wraps a pydantic ``TypeAdapter`` built once
per annotation; ``-> None`` takes a fast path with no pydantic at all.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import ResultTypeError, SpecError

__all__ = ["ResultType", "result_type"]


class ResultType:
    """Encode a module's return value to JSON bytes and decode it back, validating both ways."""

    __slots__ = ("annotation", "_adapter", "is_none")

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.is_none = annotation is None or annotation is type(None)
        self._adapter: Any = None
        if not self.is_none:
            from pydantic import PydanticSchemaGenerationError, TypeAdapter

            try:
                self._adapter = TypeAdapter(annotation)
            except (PydanticSchemaGenerationError, TypeError) as exc:
                raise SpecError(
                    f"return annotation {_describe(annotation)} cannot be serialized: "
                    f"{str(exc).splitlines()[0]}; return a pydantic model, dataclass or "
                    "builtin type"
                ) from exc

    def encode(self, value: Any, module: str) -> bytes:
        """Validate ``value`` against the annotation and return its JSON."""
        if self.is_none:
            if value is not None:
                raise ResultTypeError(
                    f"module {module!r} returned {_preview(value)} but is annotated -> None; "
                    "fix its return annotation or its return value"
                )
            return b"null"
        from pydantic import ValidationError
        from pydantic_core import PydanticSerializationError

        try:
            validated = self._adapter.validate_python(value)
            return bytes(self._adapter.dump_json(validated))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "value"
            raise ResultTypeError(
                f"module {module!r} returned {_preview(value)}, which does not match its "
                f"annotation {_describe(self.annotation)} ({loc}: {first.get('msg')}); "
                "fix the return value or the annotation"
            ) from None
        except PydanticSerializationError as exc:
            raise ResultTypeError(
                f"module {module!r} returned a value that cannot be serialized to JSON: {exc}"
            ) from None

    def decode(self, data: bytes, module: str) -> Any:
        """Parse JSON produced by `encode` (possibly on another machine) back into a value."""
        if self.is_none:
            return None
        from pydantic import ValidationError

        try:
            return self._adapter.validate_json(data)
        except ValidationError as exc:
            raise ResultTypeError(
                f"stored result of module {module!r} does not match its annotation "
                f"{_describe(self.annotation)}: {exc.errors()[0].get('msg')}"
            ) from None


@functools.cache
def _cached(annotation: Any) -> ResultType:
    return ResultType(annotation)


def result_type(annotation: Any) -> ResultType:
    """The `ResultType` for an annotation, shared between modules with the same annotation."""
    try:
        return _cached(annotation)
    except TypeError:  # unhashable annotation
        return ResultType(annotation)


def _describe(annotation: Any) -> str:
    if annotation is Any:
        return "Any"
    return getattr(annotation, "__name__", None) or repr(annotation)


def _preview(value: Any) -> str:
    text = repr(value)
    kind = type(value).__name__
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"
