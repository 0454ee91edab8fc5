"""Eval sets: positives are the held-out last items, negatives never in the history, seeded, budgeted."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from shards_world import K, LEVELS, make_world  # noqa: E402

from recbase.data.codes import read_codes  # noqa: E402
from recbase.data.evalsets import EvalSetConfig, build_eval_set, read_eval_set  # noqa: E402
from recbase.vocab import Vocab  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"), domains=("news",), n_users=80, n_items=60)


def histories(world: Path) -> dict[str, list[str]]:
    rows = pq.read_table(world / "data" / "news" / "interactions.parquet").to_pylist()
    out: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["user_id"], r["timestamp"])):
        out.setdefault(r["user_id"], []).append(r["item_id"])
    return out


def build(world: Path, out: Path, seed=0, **kw) -> pa.Table:
    codes = read_codes(world / "codes.parquet")
    build_eval_set(world / "data" / "news", codes, out, EvalSetConfig(**kw), seed)
    read_eval_set(out, codes.vocab)   # what evaluation reads passes its checks
    return pq.read_table(out)


def test_positives_history_and_negatives(world, tmp_path):
    table = build(world, tmp_path / "news.parquet", positives=3, negatives_per_positive=2, max_pairs=10_000)
    vocab = Vocab(LEVELS, K)
    codes = {r["item_id"]: r["codes"] for r in pq.read_table(world / "codes.parquet").to_pylist()}
    hist = histories(world)
    assert table.num_rows == sum(len(h) > 3 for h in hist.values())
    for row in table.to_pylist():
        items = hist[row["user_id"]]
        n_pos = sum(row["labels"])
        assert n_pos == 3 and len(row["labels"]) == 9
        pos = [c for c, lab in zip(row["candidates"], row["labels"]) if lab]
        neg = [c for c, lab in zip(row["candidates"], row["labels"]) if not lab]
        assert pos == items[-3:] and row["target"] == items[-3]
        assert not set(neg) & set(items) and len(set(neg)) == len(neg)
        want_history = [vocab.bos_id] + vocab.encode_codes(np.array([codes[i] for i in items[:-3]])).ravel().tolist()
        assert row["history"] == want_history
        assert row["candidate_tokens"] == vocab.encode_codes(np.array([codes[c] for c in row["candidates"]])).tolist()


def test_seeded_and_budgeted(world, tmp_path):
    a = build(world, tmp_path / "a.parquet", seed=5, max_pairs=50)
    b = build(world, tmp_path / "b.parquet", seed=5, max_pairs=50)
    c = build(world, tmp_path / "c.parquet", seed=6, max_pairs=50)
    assert a.equals(b) and not a.equals(c)
    assert sum(len(x) for x in a["labels"].to_pylist()) <= 50
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_negatives_come_from_interacted_items_unless_catalog_is_asked(tmp_path):
    # 600 items, 12 users of 3-39 (a few 60-119) interactions: most of the catalog is never touched
    world = make_world(tmp_path / "sparse", domains=("news",), n_users=12, n_items=600)
    touched = {i for items in histories(world).values() for i in items}
    assert len(touched) < 400
    default = build(world, tmp_path / "default.parquet", negatives_per_positive=20)
    catalog = build(world, tmp_path / "catalog.parquet", negatives_per_positive=20, negative_pool="catalog")
    negatives = {name: {c for row in t.to_pylist() for c, lab in zip(row["candidates"], row["labels"]) if not lab}
                 for name, t in (("default", default), ("catalog", catalog))}
    assert negatives["default"] and negatives["default"] <= touched
    assert negatives["catalog"] - touched           # 20 draws x 12 users from 600 items hit untouched ones
    assert pq.read_schema(tmp_path / "default.parquet").metadata[b"negatives"] == b"uniform-interacted"
    assert pq.read_schema(tmp_path / "catalog.parquet").metadata[b"negatives"] == b"uniform-catalog"


def test_real_non_clicks_are_used_when_impressions_exist(world, tmp_path):
    data = tmp_path / "data" / "news"
    data.mkdir(parents=True)
    for name in ("items.parquet", "interactions.parquet"):
        (data / name).write_bytes((world / "data" / "news" / name).read_bytes())
    hist = histories(world)
    rng = np.random.default_rng(1)
    rows = {"user_id": [], "item_id": [], "label": []}
    shown = {}
    for user, items in hist.items():
        pool = [f"n{i:04d}" for i in rng.choice(59, size=12, replace=False)]
        shown[user] = {i for i in pool if i not in items}
        rows["user_id"] += [user] * 14
        rows["item_id"] += pool + [items[-1], "n0059"]
        rows["label"] += [0] * 12 + [1, None]                 # unlabelled impressions are never negatives
    pq.write_table(pa.table({k: pa.array(v, pa.int8() if k == "label" else pa.string()) for k, v in rows.items()}),
                   data / "impressions.parquet")
    codes = read_codes(world / "codes.parquet")
    stats = build_eval_set(data, codes, tmp_path / "news.parquet", EvalSetConfig(negatives_per_positive=3), 0)
    assert stats["negatives"] == "impressions"
    read_eval_set(tmp_path / "news.parquet", codes.vocab)
    table = pq.read_table(tmp_path / "news.parquet")
    assert table.num_rows > 0
    for row in table.to_pylist():
        neg = [c for c, lab in zip(row["candidates"], row["labels"]) if not lab]
        assert neg and set(neg) <= shown[row["user_id"]]


def test_bad_options_are_refused(world, tmp_path):
    with pytest.raises(ValueError, match="positives"):
        build(world, tmp_path / "x.parquet", positives=11)
    with pytest.raises(ValueError, match="negative_pool must be one of interacted, catalog"):
        build(world, tmp_path / "x.parquet", negative_pool="popular")


def test_histories_read_a_few_users_at_a_time_equal_the_whole_domain(world):
    """The eval set reads only the histories it visits, a chunk of users per pass: any chunk gives load_domain's."""
    from collections import Counter

    from recbase.data import evalsets
    from recbase.data.sequences import item_tokens, load_domain

    codes = read_codes(world / "codes.parquet")
    domain = world / "data" / "news"
    whole = load_domain(domain, codes)
    item_ids, item_codes = codes.by_domain["news"]
    user_ids, counts, used = evalsets._users(domain, item_ids, Counter())
    assert user_ids == whole.user_ids and counts.tolist() == whole.counts.tolist()
    assert used.tolist() == np.unique(whole.item_rows).tolist()
    order = np.random.default_rng(0).permutation(len(user_ids))
    for chunk in (3, 1000):
        got = list(evalsets._histories(domain, item_ids, item_tokens(codes.vocab, item_codes), user_ids, order, chunk))
        assert [g[0] for g in got] == [user_ids[u] for u in order]
        for u, (_, rows, tokens) in zip(order, got):
            s, c = whole.starts[u], whole.counts[u]
            assert rows.tolist() == whole.item_rows[s:s + c].tolist()
            assert tokens.tolist() == whole.item_tokens[s:s + c].tolist()
