"""The cfgs shipped in ``ae_model/cfg/bundled`` and :func:`resolve_cfg`, which turns a reference
(a parsed config, a file path or a bundled cfg's name) into a :class:`DarknetConfig`."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from ae_model.cfg.lexer import CfgError
from ae_model.cfg.parser import DarknetConfig, load_cfg

BUNDLED_CFG_DIR = Path(__file__).parent / "bundled"


def list_bundled_cfgs() -> list[str]:
    """Names of the cfgs shipped in ``ae_model/cfg/bundled`` (e.g. ``"yolov3-tiny"``), sorted."""
    return list(_bundled_names())


@cache
def _bundled_names() -> tuple[str, ...]:
    # Shipped with the code, so listed once per process: the API looks a name up per submission.
    return tuple(sorted(p.stem for p in BUNDLED_CFG_DIR.glob("*.cfg")))


def bundled_cfg_path(name: str) -> Path:
    """Path of a bundled cfg by name, with or without ``.cfg``; ``CfgError`` if there is none."""
    stem = name.removesuffix(".cfg")
    if stem not in _bundled_names():
        raise CfgError(f"no bundled cfg named {name!r}; bundled: {', '.join(list_bundled_cfgs())}")
    return BUNDLED_CFG_DIR / f"{stem}.cfg"


def resolve_cfg(cfg: str | os.PathLike[str] | DarknetConfig) -> DarknetConfig:
    """The ``DarknetConfig`` a reference names, by its type and spelling alone, never by what
    exists on disk.

    A ``DarknetConfig`` is returned as is; an ``os.PathLike`` is a cfg file; a ``str`` is a
    file path if it contains a path separator or ends in ``.cfg`` (``./yolov3-tiny.cfg``),
    else the name of a bundled cfg (``yolov3-tiny``). Raises ``CfgError`` for an unknown
    bundled name (listing the bundled ones), a missing file, or cfg text, which
    :func:`~ae_model.cfg.parser.parse_cfg` parses.
    """
    if isinstance(cfg, DarknetConfig):
        return cfg
    if isinstance(cfg, str) and "\n" in cfg:
        raise CfgError(
            "resolve_cfg takes a cfg file's path or a bundled cfg's name, not cfg text; "
            "parse text with parse_cfg(text, source)"
        )
    if isinstance(cfg, str) and not _names_a_file(cfg):
        return load_cfg(bundled_cfg_path(cfg))
    path = Path(cfg)
    if not path.is_file():
        raise CfgError(
            f"no cfg file {os.fspath(path)!r}; give an existing .cfg file or the name of a "
            f"bundled cfg ({', '.join(list_bundled_cfgs())})"
        )
    return load_cfg(path)


def _names_a_file(reference: str) -> bool:
    """Whether a str reference is a path (a separator or a ``.cfg`` suffix) or a bundled name."""
    separators = (os.sep, os.altsep)
    return reference.endswith(".cfg") or any(sep and sep in reference for sep in separators)
