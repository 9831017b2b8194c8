"""Draw the pipeline's DAG as mermaid (for Markdown and GitHub) or Graphviz dot."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..model.pipeline import Pipeline

__all__ = ["to_dot", "to_gantt", "to_mermaid"]


def _node_id(name: str) -> str:
    return "m_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def to_mermaid(pipeline: Pipeline) -> str:
    """``flowchart LR`` with one node per module and dotted edges for optional dependencies."""
    lines = ["flowchart LR"]
    for name in pipeline.order:
        mod = pipeline.modules[name]
        label = name if mod.category is None else f"{name}<br/><small>{mod.category}</small>"
        lines.append(f'    {_node_id(name)}["{label}"]')
    for name in pipeline.order:
        for dep in pipeline.modules[name].depends_on:
            arrow = "-.->" if dep.optional else "-->"
            lines.append(f"    {_node_id(dep.name)} {arrow} {_node_id(name)}")
    return "\n".join(lines)


def to_dot(pipeline: Pipeline) -> str:
    """A ``digraph`` with one node per module; optional dependencies are dashed."""
    lines = ["digraph ciflow {", "    rankdir=LR;", "    node [shape=box];"]
    for name in pipeline.order:
        lines.append(f'    "{name}";')
    for name in pipeline.order:
        for dep in pipeline.modules[name].depends_on:
            style = " [style=dashed]" if dep.optional else ""
            lines.append(f'    "{dep.name}" -> "{name}"{style};')
    lines.append("}")
    return "\n".join(lines)


def to_gantt(title: str, sections: Sequence[tuple[str, Sequence[tuple[str, float, float]]]]) -> str:
    """A mermaid Gantt chart: one section per slot, one bar per (name, start, end) in seconds."""
    lines = [
        "gantt",
        f"    title {title}",
        "    dateFormat x",
        "    axisFormat %M:%S",
    ]
    for section, bars in sections:
        lines.append(f"    section {section}")
        for name, start, end in bars:
            begin = int(round(start * 1000))
            finish = max(begin + 1, int(round(end * 1000)))
            lines.append(f"    {name} : {begin}, {finish}")
    return "\n".join(lines)
