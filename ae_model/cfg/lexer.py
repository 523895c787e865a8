"""Darknet's cfg lexer: text into ``[section]``s of ``key=value`` options, as ``read_cfg`` does."""

from __future__ import annotations

from dataclasses import dataclass, field


class CfgError(ValueError):
    """A cfg that cannot be built; the message names the file, the line and what is expected."""


@dataclass
class RawSection:
    """One ``[section]`` as lexed: its name as written, header line and ``key -> value``."""

    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


def lex_cfg(text: str, source: str = "<cfg>") -> tuple[list[RawSection], list[str]]:
    """Split cfg text into sections the way darknet's ``read_cfg`` does; returns the sections
    and a warning per repeated key.

    Every whitespace character is removed from a line (so ``hue = .1`` is ``hue=.1``); lines
    starting with ``#`` or ``;`` are comments; the first occurrence of a key in a section wins
    and later ones are warned about (darknet silently ignores them).
    """
    sections: list[RawSection] = []
    warnings: list[str] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = "".join(raw_line.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if line[-1] != "]":
                raise CfgError(f"{source}:{number}: section header {line!r} does not end in ']'")
            sections.append(RawSection(line[1:-1], number))
            continue
        key, equals, value = line.partition("=")
        if not equals or not key:
            raise CfgError(
                f"{source}:{number}: expected key=value, a [section] or a # comment, "
                f"got {raw_line.strip()!r}"
            )
        if not sections:
            raise CfgError(
                f"{source}:{number}: '{key}=' comes before the first section; "
                "a cfg starts with [net]"
            )
        current = sections[-1]
        if key in current.options:
            warnings.append(
                f"{source}:{number}: repeated key '{key}' in [{current.name}] ignored; "
                f"darknet uses the first one, at line {current.option_lines[key]}"
            )
            continue
        current.options[key] = value
        current.option_lines[key] = number
    return sections, warnings
