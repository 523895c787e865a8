"""Edits of cfg text that keep every other byte: what darknet users otherwise do by hand."""

from __future__ import annotations

from ae_model.cfg.lexer import CfgError, RawSection, lex_cfg
from ae_model.cfg.parser import SectionReader
from ae_model.cfg.sections import SECTION_TYPES


def _set_value(line: str, value: str) -> str:
    """``line`` (``key = old``) with its value replaced, spacing and line ending kept."""
    head, _, tail = line.partition("=")
    start = len(tail) - len(tail.lstrip())
    end = len(tail.rstrip())
    return f"{head}={tail[:start]}{value}{tail[end:]}"


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
    lines = cfg_text.split("\n")
    edits: dict[int, str] = {}  # 1-based line -> new value of its key
    inserts: list[tuple[int, str]] = []  # (header line, "key=value") to add below the header

    def set_key(raw: RawSection, key: str, value: int) -> None:
        if key in raw.option_lines:
            edits[raw.option_lines[key]] = str(value)
        else:
            inserts.append((raw.line, f"{key}={value}"))

    for position, raw in enumerate(raw_sections):
        kind = SECTION_TYPES.get(raw.name)
        if kind not in ("yolo", "region"):
            continue
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
        set_key(raw, "classes", num_classes)
        set_key(previous, "filters", filters)
    for number, value in edits.items():
        lines[number - 1] = _set_value(lines[number - 1], value)
    for header, text in sorted(inserts, reverse=True):
        ending = "\r" if lines[header - 1].endswith("\r") else ""
        lines.insert(header, text + ending)
    return "\n".join(lines)
