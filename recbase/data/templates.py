"""Formatted item text, the paper's "unified textual representation" (RecBase, Appendix C).

Every item becomes one prompt line naming its domain kind, then a JSON object of its descriptive fields::

    Describe a movie:
    {"title": "Toy Story (1995)", "genres": "Adventure | Animation | Children | Comedy | Fantasy"}

One template per kind fixes the field order, so items of one kind always read alike whatever order a source
stores them in; empty fields are left out rather than rendered as ``""`` or ``null``, and lists are joined with
``" | "``. Fields a template does not know (from the generic reader) follow the known ones in the order given.
A list of ``[name, count]`` pairs (tag and shelf counts) renders as its names only: the counts are popularity,
not a description of the item.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from recbase.errors import UserError

LIST_SEPARATOR = " | "


@dataclass(frozen=True)
class Template:
    prompt: str                  # first line, without the colon
    fields: tuple[str, ...]      # JSON keys in their fixed order


TEMPLATES: dict[str, Template] = {
    "movie": Template("Describe a movie", ("title", "genres", "tags", "year", "director", "description")),
    "product": Template("Describe a product", ("title", "brand", "categories", "price", "features",
                                               "description", "text")),
    "book": Template("Describe a book", ("title", "authors", "series", "publisher", "publication_year",
                                         "genres", "description")),
    "game": Template("Describe a game", ("title", "genres", "tags", "specs", "developer", "publisher",
                                         "release_date", "price")),
    "news": Template("Describe a news article", ("title", "category", "subcategory", "abstract")),
    "business": Template("Describe a business", ("name", "categories", "city", "state")),
    "article": Template("Describe a fashion article", ("name", "product_type", "product_group", "colour",
                                                       "appearance", "section", "garment_group", "description")),
    "music": Template("Describe a music track", ("title", "artist", "album", "genres", "tags", "year",
                                                 "description")),
    "fashion": Template("Describe a fashion product", ("title", "brand", "categories", "colour", "material",
                                                       "description")),
    "video": Template("Describe a video", ("title", "channel", "categories", "tags", "duration", "description")),
    "recipe": Template("Describe a recipe", ("title", "tags", "ingredients", "minutes", "description")),
    "poi": Template("Describe a place", ("name", "categories", "address", "city", "state", "description")),
    "app": Template("Describe an app", ("title", "developer", "genres", "tags", "description")),
    "item": Template("Describe an item", ("title", "name", "categories", "description", "text")),
}


def clean_value(value: Any) -> str | None:
    """One field's rendered value, or None when it is empty (None, NaN, blank, or a list of empties)."""
    if type(value) is str:   # the common case first
        return " ".join(value.split()) or None
    if hasattr(value, "tolist"):   # numpy scalars and arrays (Parquet list columns) as Python values
        value = value.tolist()
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, (list, tuple)):
        if value and all(_is_name_count(v) for v in value):
            value = [v[0] for v in value]
        parts = [p for p in (clean_value(v) for v in value) if p]
        return LIST_SEPARATOR.join(parts) or None
    if isinstance(value, dict):
        return None
    return " ".join(str(value).split()) or None


def _is_name_count(value: Any) -> bool:
    """A ``[name, count]`` pair: a text and a number (not a bool)."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def field_order(kind: str, names: Iterable[str]) -> list[str]:
    """``names`` in the template's order, unknown names after, in the order given."""
    known = template(kind).fields
    names = list(dict.fromkeys(names))
    return [f for f in known if f in names] + [f for f in names if f not in known]


def template(kind: str) -> Template:
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise UserError(f"unknown template kind {kind!r}; known: {', '.join(TEMPLATES)}") from None


def clean_fields(kind: str, fields: Mapping[str, Any]) -> dict[str, str]:
    """The non-empty fields, cleaned, in the template's order: what :func:`render` puts in the JSON object."""
    cleaned = {}
    for name in field_order(kind, fields):
        value = clean_value(fields[name])
        if value:
            cleaned[name] = value
    return cleaned


def text_of(kind: str, cleaned: Mapping[str, str]) -> str:
    """The text of fields already cleaned and ordered by :func:`clean_fields`."""
    return f"{template(kind).prompt}:\n" + json.dumps(cleaned, ensure_ascii=False)


def render(kind: str, fields: Mapping[str, Any]) -> str:
    """The formatted text of one item; ``fields`` maps JSON keys to raw values."""
    return text_of(kind, clean_fields(kind, fields))
