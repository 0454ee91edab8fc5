"""Named ingest presets: how to read a dataset folder whose layout is known, so no user writes the spec by hand.

A preset is a JSON file in this folder, ``<name>.json``, read into a :class:`Preset`: the reader format, the
default domain name and template kind, and (for the ``generic`` format) the :class:`GenericSpec` fields.
``recbase ingest <preset> PATH`` takes a preset name wherever it takes a format name::

    recbase ingest amazon-books-2014 ../shared/data/amazon-books-2014 --out data --min-user-interactions 0
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from recbase.config import from_dict, load_config

PRESET_DIR = Path(__file__).resolve().parent
KIND_FORMATS = ("recbole", "generic")   # the readers whose template kind is an option


@dataclass
class Preset:
    about: str = ""                                    # what the folder holds, one line
    format: str = "generic"                            # reader format (recbase.data.readers.FORMATS)
    domain: str = ""                                   # default domain name
    kind: str = ""                                     # template kind (recbole, generic); empty: the reader's
    spec: dict = field(default_factory=dict)           # GenericSpec fields (generic format only)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def unknown_name_message(what: str, name: str, known: list[str]) -> str:
    """``unknown <what> 'x'; did you mean 'y'? known: ...`` (the hint only when a known name is close)."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(known) or '-'})"


def load_preset(name: str) -> Preset:
    path = PRESET_DIR / f"{name}.json"
    if not path.exists():
        raise ValueError(unknown_name_message("preset", name, preset_names()))
    return load_config(Preset, path)


def reader_options(preset: Preset, kind: str | None = None) -> tuple[str, dict]:
    """(format, reader options) of a preset; ``kind`` overrides the preset's template kind."""
    from recbase.data.readers.generic import GenericSpec

    options: dict = {}
    if kind and preset.format not in KIND_FORMATS:
        raise ValueError(f"a template kind applies to {' and '.join(KIND_FORMATS)} only; {preset.format} has a "
                         f"fixed kind")
    if preset.format == "generic":
        options["spec"] = from_dict(GenericSpec, preset.spec, f"preset {preset.domain or preset.format}.spec")
    if kind or preset.kind:
        options["kind"] = kind or preset.kind
    return preset.format, options
