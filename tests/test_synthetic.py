"""The demo world: seeded, readable, and with behaviour shared across domains."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from recbase.data import tables
from recbase.data.synthetic import TOPICS, WorldConfig, generate_domain, generate_world, topic_transitions

SMALL = dict(items_per_domain=120, users_per_domain=40)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    generate_world(tmp_path / "a", seed=3, **SMALL)
    generate_world(tmp_path / "b", seed=3, **SMALL)
    generate_world(tmp_path / "c", seed=4, **SMALL)
    for d in WorldConfig().domains:
        for name in (tables.ITEMS_FILE, tables.INTERACTIONS_FILE):
            a = pq.read_table(tmp_path / "a" / d / name)
            assert a.equals(pq.read_table(tmp_path / "b" / d / name))
        assert not pq.read_table(tmp_path / "a" / d / tables.INTERACTIONS_FILE).equals(
            pq.read_table(tmp_path / "c" / d / tables.INTERACTIONS_FILE))


def test_tables_follow_the_contract(tmp_path):
    summaries = generate_world(tmp_path, seed=0, **SMALL)
    assert [s.domain for s in summaries] == WorldConfig().domains
    for s in summaries:
        assert s.users == SMALL["users_per_domain"] and s.items == SMALL["items_per_domain"]
        assert not s.dropped  # min_history is above the paper's 15-interaction filter
        items = tables.read_items(tmp_path / s.domain)
        inter = tables.read_interactions(tmp_path / s.domain)
        assert inter.schema.equals(tables.INTERACTION_SCHEMA)
        assert set(inter.column("item_id").to_pylist()) <= set(items.column("item_id").to_pylist())
        df = inter.to_pandas()
        assert df.groupby("user_id").size().min() >= WorldConfig().min_history
        assert (df.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
        assert len(set(items.column("item_id").to_pylist())) == items.num_rows


def test_item_text_uses_its_topic_words():
    dt = generate_domain("movies", WorldConfig(**SMALL))
    df = dt.items.to_pandas()
    words = {label: set(nouns) | set(adjs) | {label} for label, nouns, adjs in TOPICS}
    for text, topic in zip(df["text"], df["topic"]):
        assert text.startswith("Describe a movie:\n{")
        assert any(w.lower() in text.lower() for w in words[topic]), text


def _empirical_transitions(dt) -> np.ndarray:
    df = dt.interactions.to_pandas().merge(dt.items.to_pandas()[["item_id", "topic"]], on="item_id")
    label_index = {label: i for i, (label, _, _) in enumerate(TOPICS)}
    df["t"] = df["topic"].map(label_index)
    df = df.sort_values(["user_id", "timestamp"])
    m = np.zeros((len(TOPICS), len(TOPICS)))
    for _, g in df.groupby("user_id"):
        t = g["t"].to_numpy()
        np.add.at(m, (t[:-1], t[1:]), 1)
    return m / m.sum(axis=1, keepdims=True)


def test_domains_share_sequential_behaviour():
    """Next-topic statistics of two domains agree with each other and with the world's matrix: this is the
    structure a model pretrained on one domain can carry to another."""
    cfg = WorldConfig(items_per_domain=400, users_per_domain=200)
    a = _empirical_transitions(generate_domain("movies", cfg))
    b = _empirical_transitions(generate_domain("products", cfg))
    world = topic_transitions(cfg.seed)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.7
    assert np.corrcoef(a.ravel(), world.ravel())[0, 1] > 0.7
    shuffled = world[np.random.default_rng(0).permutation(len(TOPICS))]
    assert np.corrcoef(a.ravel(), shuffled.ravel())[0, 1] < 0.5


def test_unknown_domain_is_refused():
    with pytest.raises(ValueError, match="unknown demo domain 'cars'"):
        generate_domain("cars", WorldConfig())
