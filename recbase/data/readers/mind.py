"""MIND, the Microsoft News Dataset (Wu et al., ACL 2020; https://msnews.github.io/), one split's folder.

``news.tsv``: news id, category, subcategory, title, abstract, url, title entities, abstract entities.
``behaviors.tsv``: impression id, user id, time (``11/15/2019 8:55:22 AM``), click history (space-separated news
ids), impressions (``N1-1 N2-0``: shown news and whether it was clicked; the test split has no labels).

Interactions are the clicks: the history (which MIND gives without times; it precedes the user's first
impression, so its clicks get the seconds just before that impression, in order) and the impression entries
marked ``-1``. Every impression entry, clicked or not, also goes to the extra ``impressions`` table
(``domain, user_id, impression_id, item_id, label, timestamp``; label 1/0, null when unlabeled) so eval sets
can use the real non-clicks as negatives.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa

from recbase.data.readers.common import (InputError, build_items, find_file, id_column, make_tables, read_csv,
                                         time_column)
from recbase.data.tables import DomainTables, IngestSummary

KIND = "news"
NEWS_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
                "abstract_entities"]
BEHAVIOR_COLUMNS = ["impression_id", "user_id", "time", "history", "impressions"]
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _impression(token: str, path: Path, line: int) -> tuple[str, int | None]:
    news_id, sep, label = token.rpartition("-")
    if not sep:
        return token, None
    if label not in ("0", "1") or not news_id:
        raise InputError(path, f"malformed impression {token!r} (expected NEWSID-0 or NEWSID-1)", line=line,
                         field="impressions")
    return news_id, int(label)


def read(path: Path, domain: str) -> DomainTables:
    news_path = find_file(Path(path), ["news.tsv"], "MIND news")
    behaviors_path = find_file(Path(path), ["behaviors.tsv"], "MIND behaviors")
    news = read_csv(news_path, sep="\t", header=False, names=NEWS_COLUMNS, quoting=csv.QUOTE_NONE)
    summary = IngestSummary(domain)
    items = build_items(domain, KIND, news["news_id"].tolist(),
                        {name: news[name].tolist() for name in ("title", "category", "subcategory", "abstract")},
                        summary)

    behaviors = read_csv(behaviors_path, sep="\t", header=False, names=BEHAVIOR_COLUMNS, quoting=csv.QUOTE_NONE)
    history: dict[str, list[str]] = {}
    first_seen: dict[str, int] = {}
    users, item_ids, times = [], [], []
    imp = {"user_id": [], "impression_id": [], "item_id": [], "label": [], "timestamp": []}
    rows = zip(behaviors["impression_id"], id_column(behaviors, "user_id", behaviors_path, first_line=1),
               time_column(behaviors["time"], TIME_FORMAT, behaviors_path, first_line=1).tolist(),
               behaviors["history"], behaviors["impressions"])
    for line, (impression_id, user, t, clicks, shown) in enumerate(rows, 1):
        first_seen[user] = min(t, first_seen.get(user, t))
        clicked = clicks.split()
        if len(clicked) > len(history.get(user, ())):   # a user's history only grows between impressions
            history[user] = clicked
        for token in shown.split():
            news_id, label = _impression(token, behaviors_path, line)
            for name, value in zip(imp, (user, impression_id, news_id, label, t)):
                imp[name].append(value)
            if label == 1:
                users.append(user)
                item_ids.append(news_id)
                times.append(t)
    for user, clicked in history.items():
        start = first_seen[user] - len(clicked)
        users.extend([user] * len(clicked))
        item_ids.extend(clicked)
        times.extend(range(start, start + len(clicked)))

    n = len(imp["user_id"])
    impressions = pa.table({
        "domain": pa.array([domain] * n, pa.string()),
        "user_id": pa.array(imp["user_id"], pa.string()),
        "impression_id": pa.array(imp["impression_id"], pa.string()),
        "item_id": pa.array(imp["item_id"], pa.string()),
        "label": pa.array(imp["label"], pa.int8()),
        "timestamp": pa.array(imp["timestamp"], pa.int64()),
    })
    return make_tables(domain, items, users, item_ids, times, summary, extra={"impressions": impressions})
