"""H&M Personalized Fashion Recommendations (Kaggle 2022): ``articles.csv`` and ``transactions_train.csv``.

Every purchase is an interaction, timed by its day (``t_dat``, YYYY-MM-DD; purchases of one day keep file
order). Article ids keep their leading zero, as in both files.
"""
from __future__ import annotations

from pathlib import Path

from recbase.data.readers.common import build_items, find_file, id_column, make_tables, read_csv, time_column
from recbase.data.tables import DomainTables, IngestSummary

KIND = "article"
# template field -> articles.csv column
FIELDS = {"name": "prod_name", "product_type": "product_type_name", "product_group": "product_group_name",
          "colour": "colour_group_name", "appearance": "graphical_appearance_name", "section": "section_name",
          "garment_group": "garment_group_name", "description": "detail_desc"}


def read(path: Path, domain: str) -> DomainTables:
    articles_path = find_file(Path(path), ["articles.csv*"], "H&M articles")
    transactions_path = find_file(Path(path), ["transactions_train.csv*", "transactions*.csv*"], "H&M transactions")
    articles = read_csv(articles_path, ["article_id", *FIELDS.values()])
    summary = IngestSummary(domain)
    items = build_items(domain, KIND, list(id_column(articles, "article_id", articles_path)),
                        {name: articles[column].tolist() for name, column in FIELDS.items()}, summary)
    tx = read_csv(transactions_path, ["t_dat", "customer_id", "article_id"])
    return make_tables(domain, items, id_column(tx, "customer_id", transactions_path),
                       id_column(tx, "article_id", transactions_path),
                       time_column(tx["t_dat"], "%Y-%m-%d", transactions_path), summary)
