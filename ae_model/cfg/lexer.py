"""Darknet's cfg lexer: text into ``[section]``s of ``key=value`` options, as ``read_cfg`` does."""

from __future__ import annotations

from dataclasses import dataclass, field

from ae_model.cfg.limits import MAX_CFG_CHARS, MAX_KEYS_PER_SECTION, MAX_SECTIONS

# Characters of a cfg's text an error or warning quotes; a longer text is cut, its length given.
SHOWN_CHARS = 40


class CfgError(ValueError):
    """A cfg that cannot be built; the message names the file, the line and what is expected."""


def shown(text: str) -> str:
    """``text`` as quoted in a message: at most ``SHOWN_CHARS`` characters of it."""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


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
    and later ones are warned about (darknet silently ignores them). The text, its sections and
    each section's keys are bounded (``ae_model.cfg.limits``).
    """
    if len(text) > MAX_CFG_CHARS:
        raise CfgError(
            f"{source}: the cfg has {len(text)} characters, more than {MAX_CFG_CHARS}; "
            "split the network or remove comments"
        )
    sections: list[RawSection] = []
    keys = 0
    warnings: list[str] = []
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = "".join(raw_line.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if line[-1] != "]":
                raise CfgError(
                    f"{source}:{number}: section header {shown(line)!r} does not end in ']'"
                )
            if len(sections) == MAX_SECTIONS:
                raise CfgError(
                    f"{source}:{number}: more than {MAX_SECTIONS} sections; use fewer layers"
                )
            sections.append(RawSection(line[1:-1], number))
            keys = 0
            continue
        key, equals, value = line.partition("=")
        if not equals or not key:
            raise CfgError(
                f"{source}:{number}: expected key=value, a [section] or a # comment, "
                f"got {shown(raw_line.strip())!r}"
            )
        if not sections:
            raise CfgError(
                f"{source}:{number}: '{shown(key)}=' comes before the first section; "
                "a cfg starts with [net]"
            )
        current = sections[-1]
        keys += 1
        if keys > MAX_KEYS_PER_SECTION:
            raise CfgError(
                f"{source}:{number}: [{shown(current.name)}] has more than {MAX_KEYS_PER_SECTION} "
                "key=value lines; remove the ones darknet does not need"
            )
        if key in current.options:
            warnings.append(
                f"{source}:{number}: repeated key '{shown(key)}' in [{shown(current.name)}] "
                f"ignored; darknet uses the first one, at line {current.option_lines[key]}"
            )
            continue
        current.options[key] = value
        current.option_lines[key] = number
    return sections, warnings
