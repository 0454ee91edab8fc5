"""finalize: every drop is counted under its reason; output sorted by user then time; writes are atomic."""
import pyarrow as pa
import pytest

from recbase.data.tables import (DomainTables, IngestSummary, finalize, list_domains, make_interactions_table,
                                 make_items_table, read_interactions, read_items, write_domain)


def _tables(interactions, items=("a", "b", "c"), extra=None):
    users, item_ids, ts = zip(*interactions) if interactions else ((), (), ())
    return DomainTables("d", make_items_table("d", list(items), [f"text {i}" for i in items]),
                        make_interactions_table("d", list(users), list(item_ids), list(ts)), IngestSummary("d"),
                        extra or {})


def test_drops_are_counted_by_reason():
    rows = [("u1", "a", 3), ("u1", "a", 3), ("u1", "zz", 4), ("u1", "b", 1), ("u2", "c", 5)]
    t = finalize(_tables(rows, items=("a", "b", "c", "a")), min_user_interactions=2, max_history=0)
    s = t.summary
    assert s.dropped_reasons() == {"duplicate item rows": 1, "duplicate interaction rows": 1,
                         "interaction whose item has no metadata": 1,
                         "users with < 2 interactions (1 users)": 1}
    assert (s.items, s.users, s.interactions, s.read_items, s.read_interactions) == (3, 1, 2, 4, 5)
    assert t.interactions.to_pydict()["item_id"] == ["b", "a"]   # sorted by time within the user
    assert "dropped 1: duplicate item rows" in s.format()


def test_sort_is_by_user_then_time_and_stable_for_ties():
    rows = [("u2", "a", 5), ("u1", "c", 2), ("u1", "a", 2), ("u1", "b", 1), ("u2", "b", 1)]
    t = finalize(_tables(rows), min_user_interactions=0, max_history=0)
    d = t.interactions.to_pydict()
    assert list(zip(d["user_id"], d["item_id"], d["timestamp"])) == [
        ("u1", "b", 1), ("u1", "c", 2), ("u1", "a", 2), ("u2", "b", 1), ("u2", "a", 5)]


def test_max_history_keeps_last_n_per_user():
    rows = [("u1", "abc"[i % 3], i) for i in range(7)] + [("u2", "a", 0)]
    t = finalize(_tables(rows), min_user_interactions=0, max_history=3)
    d = t.interactions.to_pydict()
    assert d["timestamp"] == [4, 5, 6, 0]
    assert t.summary.dropped == {"interactions older than the last 3 of a user": 4}


def test_max_users_keeps_a_seeded_sample_and_its_items():
    # u0..u9, user k touches item k and item "shared"; items x, y are never touched by anyone
    rows = [(f"u{k}", f"i{k}", 1) for k in range(10)] + [(f"u{k}", "shared", 2) for k in range(10)]
    items = [f"i{k}" for k in range(10)] + ["shared", "x", "y"]
    t = finalize(_tables(rows, items=items), min_user_interactions=0, max_history=0, max_users=3)
    d = t.interactions.to_pydict()
    users = sorted(set(d["user_id"]))
    assert len(users) == 3 and t.summary.users == 3 and len(d["user_id"]) == 6
    assert sorted(t.items.column("item_id").to_pylist()) == sorted([f"i{u[1:]}" for u in users] + ["shared"])
    assert t.summary.dropped_reasons() == {"users outside a random sample of 3 (7 users)": 14,
                                 "items no sampled user interacted with": 9}
    again = finalize(_tables(rows, items=items), min_user_interactions=0, max_history=0, max_users=3)
    assert again.interactions.equals(t.interactions)
    whole = finalize(_tables(rows, items=items), min_user_interactions=0, max_history=0, max_users=10)
    assert whole.items.num_rows == 13 and not whole.summary.dropped


def test_extra_tables_follow_kept_users_and_known_items(tmp_path):
    extra = pa.table({"user_id": ["u1", "u2", "u1"], "item_id": ["a", "a", "nope"], "label": [1, 0, 0]})
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 1)]
    t = finalize(_tables(rows, extra={"impressions": extra}), min_user_interactions=2, max_history=0)
    assert t.extra["impressions"].to_pydict()["label"] == [1]
    assert t.summary.extra == {"impressions": 1}
    folder = write_domain(t, tmp_path)
    assert (folder / "impressions.parquet").exists()


def test_write_is_atomic_and_rerun_replaces(tmp_path):
    t = finalize(_tables([("u1", "a", 1)]), 0, 0)
    folder = write_domain(t, tmp_path)
    t2 = finalize(_tables([("u1", "a", 1), ("u1", "b", 2)]), 0, 0)
    write_domain(t2, tmp_path)
    assert read_interactions(folder).num_rows == 2 and read_items(folder).num_rows == 3
    assert sorted(p.name for p in folder.iterdir()) == ["interactions.parquet", "items.parquet"]
    assert list_domains(tmp_path) == [folder]


def test_empty_interactions_give_empty_tables():
    t = finalize(_tables([]), 15, 2500)
    assert t.interactions.num_rows == 0 and t.summary.users == 0 and t.summary.items == 3
    assert t.interactions.schema.field("timestamp").type == pa.int64()


@pytest.mark.parametrize("min_users", [0, 1])
def test_zero_and_one_keep_everyone(min_users):
    t = finalize(_tables([("u1", "a", 1), ("u2", "b", 1)]), min_user_interactions=min_users, max_history=0)
    assert t.summary.users == 2 and not t.summary.dropped


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 1000])
def test_count_users_reads_in_batches_and_equals_a_distinct_count(tmp_path, batch_rows):
    """Users are counted as runs of the sorted table, across batch boundaries; an unsorted table is counted whole."""
    import pyarrow.parquet as pq

    from recbase.data.tables import INTERACTIONS_FILE, count_users

    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u3", "b", 1), ("u3", "c", 2),
            ("ü4", "a", 9)]
    folder = write_domain(finalize(_tables(rows), min_user_interactions=0, max_history=0), tmp_path)
    assert count_users(folder, batch_rows) == (4, 7)
    shuffled = read_interactions(folder).take([4, 0, 6, 3, 1, 5, 2])
    pq.write_table(shuffled, folder / INTERACTIONS_FILE)
    assert count_users(folder, batch_rows) == (4, 7)
