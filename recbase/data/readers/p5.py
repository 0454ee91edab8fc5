"""P5's preprocessed sequential-recommendation folders (Geng et al., RecSys 2022), the split TIGER and later
generative recommenders report on (Amazon Beauty, Sports, Toys).

A folder holds:

- ``sequential_data.txt``: one line per user, ``user_id item_id item_id ...`` (P5 integer ids, space-separated,
  CRLF or LF), items in chronological order;
- ``datamaps.json``: ``id2item`` maps a P5 item id to its ASIN (the catalog);
- ``item_titles.jsonl``: one ``{"p5_item_id", "asin", "title"}`` object per item (P5 ships no item text).

P5 ids are kept as the user and item ids, so results line up with the published ones. P5 publishes no times:
an interaction's timestamp is its position in the user's line (0, 1, ...), which keeps P5's order and with it
the leave-one-out split (last item = test target). An item whose title is null is kept with a placeholder text
naming its ASIN and counted in the summary; dropping it would drop the test targets of some users.
"""
from __future__ import annotations

import json
from pathlib import Path

from recbase.data.readers.common import InputError, iter_lines, iter_records, make_tables, require
from recbase.data.tables import DomainTables, IngestSummary, make_items_table
from recbase.data.templates import clean_fields, text_of

KIND = "product"
SEQUENCES_FILE = "sequential_data.txt"
DATAMAPS_FILE = "datamaps.json"
TITLES_FILE = "item_titles.jsonl"
UNTITLED = "items without a title (placeholder text)"


def _catalog(path: Path) -> dict[str, str]:
    """P5 item id -> ASIN from ``datamaps.json``."""
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"malformed JSON ({e.msg})", line=e.lineno) from None
    id2item = maps.get("id2item") if isinstance(maps, dict) else None
    if not isinstance(id2item, dict) or not id2item:
        raise InputError(path, "missing or empty mapping", field="id2item")
    return {str(k): str(v) for k, v in id2item.items()}


def _titles(path: Path, catalog: dict[str, str]) -> dict[str, str | None]:
    """P5 item id -> title (None when the source has none); every id must be in the catalog with its ASIN."""
    titles: dict[str, str | None] = {}
    for lineno, record in iter_records(path, "titles"):
        item = str(require(record, "p5_item_id", path, lineno))
        if item not in catalog:
            raise InputError(path, f"item {item} is not in {DATAMAPS_FILE} id2item", line=lineno,
                             field="p5_item_id")
        asin = record.get("asin")
        if asin is not None and str(asin) != catalog[item]:
            raise InputError(path, f"ASIN {asin!r} disagrees with {DATAMAPS_FILE} ({catalog[item]!r})",
                             line=lineno, field="asin")
        if item in titles:
            raise InputError(path, f"item {item} listed twice", line=lineno, field="p5_item_id")
        title = record.get("title")
        titles[item] = title if isinstance(title, str) and title.strip() else None
    return titles


def read(path: Path, domain: str) -> DomainTables:
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "not a folder" if path.exists() else "path not found")
    summary = IngestSummary(domain)
    catalog = _catalog(path / DATAMAPS_FILE)
    titles = _titles(path / TITLES_FILE, catalog)

    ids, texts, raw_titles, asins = [], [], [], []
    untitled = 0
    for item, asin in catalog.items():
        title = titles.get(item)
        if title is None:
            untitled += 1
        fields = clean_fields(KIND, {"title": title if title is not None else f"untitled product {asin}"})
        ids.append(item)
        texts.append(text_of(KIND, fields))
        raw_titles.append(title)
        asins.append(asin)
    summary.extra[UNTITLED] = untitled
    items = make_items_table(domain, ids, texts, {"title": raw_titles, "asin": asins})

    sequences = path / SEQUENCES_FILE
    users, item_ids, positions = [], [], []
    seen_users: dict[str, int] = {}
    for lineno, text in iter_lines(sequences, "sequences"):
        user, *sequence = text.split()
        if not sequence:
            raise InputError(sequences, "a user with no items", line=lineno, field="item_id")
        if user in seen_users:
            raise InputError(sequences, f"user {user} already on line {seen_users[user]}", line=lineno,
                             field="user_id")
        seen_users[user] = lineno
        for position, item in enumerate(sequence):
            if item not in catalog:
                raise InputError(sequences, f"item {item!r} (position {position + 1}) is not in "
                                            f"{DATAMAPS_FILE} id2item", line=lineno, field="item_id")
            users.append(user)
            item_ids.append(item)
            positions.append(position)
    return make_tables(domain, items, users, item_ids, positions, summary)
