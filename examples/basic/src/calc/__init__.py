"""A tiny library for the example pipeline to lint, test and package."""

__version__ = "1.2.0"


def add(a: int, b: int) -> int:
    return a + b


def mean(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)
