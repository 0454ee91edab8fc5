"""MovieLens, in its three published layouts (GroupLens, https://grouplens.org/datasets/movielens/).

- CSV (ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m): ``movies.csv`` (movieId,title,genres) and
  ``ratings.csv`` (userId,movieId,rating,timestamp), UTF-8 with a header.
- DAT (ml-1m, ml-10m): ``movies.dat`` and ``ratings.dat``, ``::``-separated without a header. ml-1m is Latin-1,
  ml-10m UTF-8: a DAT file that is not valid UTF-8 is read as Latin-1.
- ml-100k: ``u.item`` (``|``-separated, Latin-1, 19 genre flags named by ``u.genre``) and ``u.data``
  (tab-separated user, item, rating, timestamp).

Every rating counts as an interaction (the paper's "interaction"), timestamps are Unix seconds.
"""
from __future__ import annotations

import csv
from pathlib import Path

from recbase.data.readers.common import (InputError, build_items, id_column, make_tables, read_csv,
                                         seconds_column)
from recbase.data.tables import DomainTables, IngestSummary

KIND = "movie"
NO_GENRES = "(no genres listed)"
# The ml-100k genre flags, in u.item's column order (as listed in ml-100k's u.genre and README).
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western")


def split_genres(genres: str) -> list[str]:
    return [g for g in genres.split("|") if g and g != NO_GENRES]


def read(path: Path, domain: str) -> DomainTables:
    """Read whichever MovieLens layout ``path`` (the unpacked folder) holds."""
    path = Path(path)
    if (path / "ratings.csv").exists():
        return _read_csv_layout(path, domain)
    if (path / "ratings.dat").exists():
        return _read_dat_layout(path, domain)
    if (path / "u.data").exists():
        return _read_100k_layout(path, domain)
    raise InputError(path, "not a MovieLens folder (expected ratings.csv, ratings.dat or u.data)")


def _tables(domain, movie_ids, titles, genres, ratings, ratings_path, first) -> DomainTables:
    """``first``: the line number of the ratings file's first data row."""
    summary = IngestSummary(domain)
    items = build_items(domain, KIND, list(movie_ids), {"title": list(titles), "genres": list(genres)}, summary)
    return make_tables(domain, items, id_column(ratings, "userId", ratings_path, first),
                       id_column(ratings, "movieId", ratings_path, first),
                       seconds_column(ratings["timestamp"], ratings_path, first), summary)


def _read_csv_layout(path: Path, domain: str) -> DomainTables:
    movies = read_csv(path / "movies.csv", ["movieId", "title", "genres"])
    ratings = read_csv(path / "ratings.csv", ["userId", "movieId", "timestamp"])
    return _tables(domain, movies["movieId"], movies["title"], map(split_genres, movies["genres"]),
                   ratings, path / "ratings.csv", 2)


def read_chunked(path: Path, domain: str, chunk_rows: int = 1 << 20):
    """The CSV layout as :func:`recbase.data.readers.generic.read_chunked` gives a generic dataset: the items
    table, the summary and the ratings as an iterator of ``(users, items, seconds)`` chunks, checked as
    :func:`read` checks the whole file, so that :mod:`recbase.data.ingest_stream` ingests ml-25m-sized logs in
    bounded memory."""
    from recbase.data.readers.generic import table_chunks

    path = Path(path)
    movies = read_csv(path / "movies.csv", ["movieId", "title", "genres"])
    summary = IngestSummary(domain)
    items = build_items(domain, KIND, list(movies["movieId"]),
                        {"title": list(movies["title"]), "genres": list(map(split_genres, movies["genres"]))},
                        summary)
    ratings_path = path / "ratings.csv"

    def chunks(counts: IngestSummary):
        for df, first in table_chunks(ratings_path, chunk_rows):
            for col in ("userId", "movieId", "timestamp"):
                if col not in df.columns:   # as read_csv says it
                    raise InputError(ratings_path, f"missing column (header has: {', '.join(map(str, df.columns))})",
                                     line=1, field=col)
            yield (id_column(df, "userId", ratings_path, first), id_column(df, "movieId", ratings_path, first),
                   seconds_column(df["timestamp"], ratings_path, first))

    return items, summary, chunks


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_dat(path: Path, names: list[str]):
    text = _decode(path).replace("::", "\t")
    return read_csv(path, sep="\t", header=False, names=names, quoting=csv.QUOTE_NONE, data=text)


def _read_dat_layout(path: Path, domain: str) -> DomainTables:
    movies = _read_dat(path / "movies.dat", ["movieId", "title", "genres"])
    ratings = _read_dat(path / "ratings.dat", ["userId", "movieId", "rating", "timestamp"])
    return _tables(domain, movies["movieId"], movies["title"], map(split_genres, movies["genres"]),
                   ratings, path / "ratings.dat", 1)


def _read_100k_layout(path: Path, domain: str) -> DomainTables:
    genre_names = list(ML100K_GENRES)
    if (path / "u.genre").exists():
        genres_df = read_csv(path / "u.genre", sep="|", header=False, names=["name", "index"],
                             encoding="latin-1", quoting=csv.QUOTE_NONE)
        genre_names = [n for n in genres_df["name"] if n]
    names = ["movieId", "title", "release_date", "video_release_date", "imdb_url"] + genre_names
    movies = read_csv(path / "u.item", sep="|", header=False, names=names, encoding="latin-1",
                      quoting=csv.QUOTE_NONE)
    flags = movies[genre_names].to_numpy() == "1"
    genres = [[g for g, on in zip(genre_names, row) if on and g != "unknown"] for row in flags]
    ratings = read_csv(path / "u.data", sep="\t", header=False, names=["userId", "movieId", "rating", "timestamp"],
                       quoting=csv.QUOTE_NONE)
    return _tables(domain, movies["movieId"], movies["title"], genres, ratings, path / "u.data", 1)
