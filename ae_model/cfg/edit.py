"""Edits of cfg text that keep every other byte: what darknet users otherwise do by hand."""

from __future__ import annotations

from collections.abc import Sequence

from ae_model.cfg.lexer import CfgError, RawSection, lex_cfg
from ae_model.cfg.parser import SectionReader
from ae_model.cfg.sections import SECTION_TYPES


def _set_value(line: str, value: str) -> str:
    """``line`` (``key = old``) with its value replaced, spacing and line ending kept."""
    head, _, tail = line.partition("=")
    start = len(tail) - len(tail.lstrip())
    end = len(tail.rstrip())
    return f"{head}={tail[:start]}{value}{tail[end:]}"


def _apply(cfg_text: str, changes: list[tuple[RawSection, str, str]]) -> str:
    """``cfg_text`` with each ``(section, key, value)`` set: the key's line rewritten in place,
    or ``key=value`` added under the section's header when the section lacks the key."""
    lines = cfg_text.split("\n")
    inserts: list[tuple[int, str]] = []  # (header line, "key=value") to add below the header
    for raw, key, value in changes:
        if key in raw.option_lines:
            number = raw.option_lines[key]
            lines[number - 1] = _set_value(lines[number - 1], value)
        else:
            inserts.append((raw.line, f"{key}={value}"))
    for header, text in sorted(inserts, reverse=True):
        ending = "\r" if lines[header - 1].endswith("\r") else ""
        lines.insert(header, text + ending)
    return "\n".join(lines)


def _heads(raw_sections: list[RawSection]) -> list[tuple[int, RawSection, str]]:
    """``(position, section, kind)`` of every [yolo] and [region], in order."""
    return [
        (position, raw, SECTION_TYPES[raw.name])
        for position, raw in enumerate(raw_sections)
        if SECTION_TYPES.get(raw.name) in ("yolo", "region")
    ]


def retarget_classes(cfg_text: str, num_classes: int) -> str:
    """Set ``classes=`` of every [yolo]/[region] and ``filters=`` of the [convolutional] just
    before each, as darknet users do by hand; every other byte is kept.

    ``filters`` becomes ``(classes + 5) * len(mask)`` for [yolo] and
    ``(classes + coords + 1) * num`` for [region]. A missing key is added under the header.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected at least 1")
    source = "<retarget_classes>"
    raw_sections, _ = lex_cfg(cfg_text, source)  # the cfg's own warnings are not ours
    changes: list[tuple[RawSection, str, str]] = []
    for position, raw, kind in _heads(raw_sections):
        previous = raw_sections[position - 1] if position > 1 else None
        if previous is None or SECTION_TYPES.get(previous.name) != "convolutional":
            raise CfgError(
                f"{source}:{raw.line}: [{kind}] does not follow a [convolutional]; "
                "set the filters= of its input layer by hand"
            )
        reader = SectionReader(raw, kind, source)
        num = reader.integer("num", 1)
        if kind == "yolo":
            filters = (num_classes + 5) * len(reader.integers("mask") or range(num))
        else:
            filters = (num_classes + reader.integer("coords", 4) + 1) * num
        changes += [(raw, "classes", str(num_classes)), (previous, "filters", str(filters))]
    return _apply(cfg_text, changes)


def set_anchors(cfg_text: str, anchors: Sequence[str]) -> str:
    """Set ``anchors=`` of the cfg's [yolo]/[region] heads, in order, to ``anchors[i]`` (a
    darknet list such as ``"10,14, 23,27"``); every other byte is kept.

    Raises:
        ValueError: ``anchors`` does not hold one list per head.
    """
    raw_sections, _ = lex_cfg(cfg_text, "<set_anchors>")
    heads = _heads(raw_sections)
    if len(heads) != len(anchors):
        raise ValueError(f"{len(anchors)} anchor lists for {len(heads)} heads")
    return _apply(
        cfg_text, [(raw, "anchors", text) for (_, raw, _), text in zip(heads, anchors, strict=True)]
    )
