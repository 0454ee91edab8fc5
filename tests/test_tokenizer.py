"""Item tokenizer: training components, artifact round trips, per-domain normalisation, collisions, commands."""
from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recbase.cli import main
from recbase.data.tables import make_interactions_table, make_items_table, DomainTables, IngestSummary, write_domain
from recbase.tokenizer.artifact import ArtifactError, load_tokenizer
from recbase.tokenizer.clvae import CLVAEConfig, check_config, quantize
from recbase.tokenizer.collisions import catalog_index, collision_rate, disambiguation_level
from recbase.tokenizer.embed import HashingEmbedder, embed_folder
from recbase.tokenizer.modules import MLP
from recbase.tokenizer.train import TokenizerConfig, train_tokenizer


def clustered(n: int, dim: int = 32, clusters: int = 24, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres, all shifted by ``offset`` along one axis (a domain's own cone)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, dim))
    x[:, 0] += offset
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def small_config(kind: str = "clvae", **clvae) -> TokenizerConfig:
    cfg = TokenizerConfig(kind=kind, levels=3, codebook_size=32)
    cfg.clvae = CLVAEConfig(hidden_dims=[64], latent_dim=16, epochs=9, epochs_per_level=3, min_epochs_per_level=2,
                            batch_size=128, **clvae)
    cfg.fsq.hidden_dims, cfg.fsq.epochs, cfg.fsq.fsq_levels = [64], 20, 2
    cfg.rqkmeans.iters = 10
    return cfg


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest (and least disturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def domains():
    return {"movies": clustered(420, offset=2.0, seed=1), "tools": clustered(300, offset=-2.0, seed=2)}


@pytest.fixture(scope="module")
def trained(domains):
    return {kind: train_tokenizer(small_config(kind), domains, "synthetic", progress=False)
            for kind in ("clvae", "rqkmeans", "fsq")}


def level1_usage(tok, domains) -> int:
    codes = np.concatenate([tok.encode(e, tok.stats_for(d, e)) for d, e in domains.items()])
    return len(np.unique(codes[:, 0]))


def test_training_and_encoding_are_deterministic(domains, trained):
    tok, _ = trained["clvae"]
    again, _ = train_tokenizer(small_config("clvae"), domains, "synthetic", progress=False)
    emb = domains["movies"]
    codes = tok.encode(emb, tok.stats_for("movies", emb))
    assert codes.shape == (len(emb), 3) and codes.dtype == np.int64
    np.testing.assert_array_equal(codes, again.encode(emb, again.stats_for("movies", emb)))
    np.testing.assert_array_equal(codes, tok.encode(emb, tok.stats_for("movies", emb)))


@pytest.mark.parametrize("kind", ["clvae", "rqkmeans"])
def test_training_is_bit_for_bit_repeatable_with_threads(kind, domains, tmp_path):
    """Two trainings with several threads give the same artifact hash (multi-threaded index_add_ in k-means
    once made the last bits, and so the hash and every downstream shard, differ between runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hashes = {train_tokenizer(small_config(kind), domains, "synthetic", progress=False)[0].save(tmp_path / str(i))
                  for i in range(2)}
    finally:
        torch.set_num_threads(threads)
    assert len(hashes) == 1
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


@pytest.mark.parametrize("kind", ["clvae", "rqkmeans", "fsq"])
def test_each_kind_round_trips_through_the_artifact(kind, domains, trained, tmp_path):
    tok, _ = trained[kind]
    digest = tok.save(tmp_path / kind)
    loaded = load_tokenizer(tmp_path / kind)
    assert (loaded.kind, loaded.levels, loaded.codebook_size, loaded.hash) == (kind, 3, 32, digest)
    assert loaded.train_domains == ["movies", "tools"]
    for domain, emb in domains.items():
        codes = tok.encode(emb, tok.stats_for(domain, emb))
        assert codes.min() >= 0 and codes.max() < 32
        np.testing.assert_array_equal(codes, loaded.encode(emb, loaded.stats_for(domain, emb)))
        np.testing.assert_allclose(tok.reconstruct(codes), loaded.reconstruct(codes), atol=1e-6)
    # Saving the same tokenizer again gives the same content hash.
    assert tok.save(tmp_path / f"{kind}-again") == digest


def test_reconstruction_beats_the_catalog_mean(domains, trained):
    """Every kind must carry information: its reconstruction error is below that of predicting the mean."""
    for kind, (tok, _) in trained.items():
        x = tok.normalize(domains["movies"], tok.stats_for("movies", domains["movies"]))
        recon = tok.reconstruct(tok.encode(domains["movies"], tok.stats_for("movies", domains["movies"])))
        assert ((x - recon) ** 2).sum(1).mean() < ((x - x.mean(0)) ** 2).sum(1).mean(), kind


def test_kmeans_init_raises_usage(domains):
    plain = dict(curriculum=False, reinit_dead=False, entropy_weight=0.0)
    without, _ = train_tokenizer(small_config(kmeans_init=False, **plain), domains, "synthetic", progress=False)
    with_init, _ = train_tokenizer(small_config(kmeans_init=True, **plain), domains, "synthetic", progress=False)
    assert level1_usage(with_init, domains) > level1_usage(without, domains) + 5


def test_dead_code_reinit_raises_usage(domains):
    plain = dict(curriculum=False, kmeans_init=False, entropy_weight=0.0)
    without, _ = train_tokenizer(small_config(reinit_dead=False, **plain), domains, "synthetic", progress=False)
    with_reinit, hist = train_tokenizer(small_config(reinit_dead=True, **plain), domains, "synthetic", progress=False)
    assert sum(hist[0]["reinitialised"]) > 0
    assert level1_usage(with_reinit, domains) > level1_usage(without, domains) + 5


def test_entropy_term_has_gradient_wrt_encoder():
    torch.manual_seed(0)
    encoder = MLP([32, 64, 16])
    x = torch.from_numpy(clustered(256).astype(np.float32))
    codebooks = torch.randn(2, 32, 16)
    cfg = CLVAEConfig(entropy_weight=1.0)
    _, _, entropy_deficit = quantize(encoder(x), codebooks, 2, cfg)
    assert 0 < entropy_deficit.item() < 2 * np.log(32)
    entropy_deficit.backward()
    grads = [p.grad.abs().sum().item() for p in encoder.parameters()]
    assert all(g > 0 for g in grads)
    # Switched off, the term is exactly zero.
    _, _, off = quantize(encoder(x), codebooks, 2, CLVAEConfig(entropy_weight=0.0))
    assert off.item() == 0.0


def test_curriculum_activates_levels_in_order(trained, domains):
    _, history = trained["clvae"]
    active = [h["active_levels"] for h in history]
    assert active[0] == 1 and active[-1] == 3
    assert all(b - a in (0, 1) for a, b in zip(active, active[1:]))
    assert all(len(h["used_codes"]) == h["active_levels"] for h in history)
    _, flat = train_tokenizer(small_config(curriculum=False), domains, "synthetic", progress=False)
    assert {h["active_levels"] for h in flat} == {3}


def test_curriculum_advances_early_on_a_plateau(domains):
    # plateau_tol=10 means any epoch counts as a plateau, so each level stays only min_epochs_per_level epochs.
    cfg = small_config(plateau_tol=10.0)
    _, history = train_tokenizer(cfg, domains, "synthetic", progress=False)
    assert [h["active_levels"] for h in history] == [1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_curriculum_config_must_leave_epochs_for_all_levels():
    with pytest.raises(ValueError, match="epochs_per_level"):
        check_config(CLVAEConfig(epochs=6, epochs_per_level=3), levels=3)


def test_unseen_domain_is_normalised_with_its_own_catalog(domains, trained):
    """A new domain that is a training domain moved by a constant vector gets the same codes once centred."""
    tok, _ = trained["clvae"]
    emb = domains["movies"].astype(np.float32)
    shifted = emb + np.linspace(-0.5, 0.5, emb.shape[1], dtype=np.float32)
    stats = tok.stats_for("new-domain", shifted)
    np.testing.assert_allclose(stats.mean, shifted.mean(0), atol=1e-5)
    assert stats.n_items == len(shifted)
    np.testing.assert_array_equal(tok.encode(shifted, stats), tok.encode(emb, tok.stats_for("movies", emb)))
    # Without per-domain normalisation the shift changes the codes.
    raw, _ = train_tokenizer(_with(small_config(), normalization="none"), domains, "synthetic", progress=False)
    assert (raw.encode(shifted, raw.stats_for("new-domain", shifted)) != raw.encode(emb, None)).any()


def _with(cfg: TokenizerConfig, **fields) -> TokenizerConfig:
    for k, v in fields.items():
        setattr(cfg, k, v)
    return cfg


def test_whitening_is_stored_and_applied(domains, tmp_path):
    tok, _ = train_tokenizer(_with(small_config("rqkmeans"), normalization="whiten"), domains, "s", progress=False)
    tok.save(tmp_path / "w")
    loaded = load_tokenizer(tmp_path / "w")
    assert loaded.domain_stats["movies"].whiten.shape == (32, 32)
    x = loaded.normalize(domains["tools"], loaded.stats_for("tools", domains["tools"]))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_bad_artifacts_give_clear_errors(trained, tmp_path):
    tok, _ = trained["rqkmeans"]
    with pytest.raises(ArtifactError, match="config.json is missing"):
        load_tokenizer(tmp_path / "nowhere")
    tok.save(tmp_path / "a")
    (tmp_path / "a" / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors is missing"):
        load_tokenizer(tmp_path / "a")

    tok.save(tmp_path / "b")
    cfg_path = tmp_path / "b" / "config.json"
    config = json.loads(cfg_path.read_text())
    config["codebook_size"] = 64
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        load_tokenizer(tmp_path / "b")

    other, _ = trained["fsq"]
    tok.save(tmp_path / "c")
    other.save(tmp_path / "d")
    (tmp_path / "d" / "weights.safetensors").replace(tmp_path / "c" / "weights.safetensors")
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        load_tokenizer(tmp_path / "c")

    tok.save(tmp_path / "e")
    (tmp_path / "e" / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="cannot read weights"):
        load_tokenizer(tmp_path / "e")


def test_disambiguation_makes_tuples_unique():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3]])
    assert collision_rate(codes) == pytest.approx(3 / 6)
    extra = disambiguation_level(codes, codebook_size=4)
    np.testing.assert_array_equal(extra, [0, 1, 0, 2, 1, 0])
    assert collision_rate(np.c_[codes, extra]) == 0.0
    with pytest.raises(ValueError, match="more than the codebook size 2"):
        disambiguation_level(codes, codebook_size=2)
    index = catalog_index(codes, list("abcdef"))
    assert index == {(1, 2): ["a", "b", "d"], (0, 0): ["c", "e"], (3, 3): ["f"]}


def write_data(root, domains: dict[str, int]) -> None:
    """Domain folders with items whose texts share words within a domain (so hashing embeddings cluster)."""
    for d, n in domains.items():
        ids = [f"{d}-{i}" for i in range(n)]
        texts = [f"Describe a {d}: {{\"title\": \"{d} thing {i % 17} kind {i % 5} part {i}\"}}" for i in range(n)]
        inter = make_interactions_table(d, ["u1"] * 3, ids[:3], [1, 2, 3])
        write_domain(DomainTables(d, make_items_table(d, ids, texts), inter, IngestSummary(d)), root)


def test_commands_train_encode_report(tmp_path, capsys):
    data, emb, art = tmp_path / "data", tmp_path / "emb", tmp_path / "tok"
    write_data(data, {"books": 300, "games": 200, "garden": 150})
    embed_folder(data, emb, model="hashing", progress=False)
    args = ["--data", str(data), "--emb", str(emb)]
    assert main(["tokenizer", "train", *args, "--out", str(art), "--domains", "books,games", "kind=rqkmeans",
                 "levels=3", "codebook_size=16", "disambiguate=true", "rqkmeans.iters=5"]) == 0
    tok = load_tokenizer(art)
    assert tok.embedder == HashingEmbedder.name and tok.train_domains == ["books", "games"]

    out = tmp_path / "codes.parquet"
    assert main(["tokenizer", "encode", "--artifact", str(art), *args, "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.schema.metadata[b"tokenizer_hash"].decode() == tok.hash
    assert json.loads(table.schema.metadata[b"train_domains"]) == ["books", "games"]
    assert table.schema.metadata[b"tokenizer_kind"] == b"rqkmeans"
    assert table.column_names == ["domain", "item_id", "codes"]
    assert table.num_rows == 650
    for domain in ("books", "games", "garden"):
        rows = [c for d, c in zip(table.column("domain").to_pylist(), table.column("codes").to_pylist()) if d == domain]
        codes = np.array(rows)
        assert codes.shape[1] == 4 and codes.max() < 16
        assert collision_rate(codes) == 0.0  # the disambiguation level separates every item

    # Encoding again with the same tokenizer replaces its own codes; another tokenizer's only with --overwrite.
    assert main(["tokenizer", "encode", "--artifact", str(art), *args, "--out", str(out)]) == 0
    other = tmp_path / "tok2"
    assert main(["tokenizer", "train", *args, "--out", str(other), "--domains", "books", "kind=rqkmeans", "levels=2",
                 "codebook_size=8", "rqkmeans.iters=2"]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--artifact", str(other), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: already holds codes of tokenizer {tok.hash}" in err and "--overwrite" in err
    assert pq.read_schema(out).metadata[b"tokenizer_hash"].decode() == tok.hash
    assert main(["tokenizer", "encode", "--artifact", str(other), *args, "--out", str(out), "--overwrite"]) == 0
    assert pq.read_schema(out).metadata[b"tokenizer_hash"].decode() == load_tokenizer(other).hash
    assert main(["tokenizer", "encode", "--artifact", str(art), *args, "--out", str(out), "--overwrite"]) == 0

    report_dir = tmp_path / "report"
    assert main(["tokenizer", "report", "--artifact", str(art), *args, "--out", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["summary"]["unseen"]["domains"] == ["garden"]
    assert report["summary"]["trained"]["items"] == 500
    assert len(report["domains"]["garden"]["levels"]) == 3
    assert (report_dir / "usage.png").read_bytes()[:4] == b"\x89PNG"
    assert "| **unseen** | 150 |" in (report_dir / "report.md").read_text()
    shares = report["summary"]["trained"]["neighbour_prefix_share"]
    assert len(shares) == 3 and 1 >= shares[0] >= shares[1] >= shares[2] >= 0   # a longer prefix is rarer

    # A tampered artifact is refused by the command with the reason.
    cfg = json.loads((art / "config.json").read_text())
    cfg["embedder"] = "other"
    (art / "config.json").write_text(json.dumps(cfg))
    assert main(["tokenizer", "encode", "--artifact", str(art), *args, "--out", str(out)]) == 2
    assert "content hash mismatch" in capsys.readouterr().err


def test_unknown_config_key_is_rejected(tmp_path, capsys):
    data = tmp_path / "data"
    write_data(data, {"books": 20})
    embed_folder(data, tmp_path / "emb", model="hashing", progress=False)
    assert main(["tokenizer", "train", "--data", str(data), "--emb", str(tmp_path / "emb"), "--out",
                 str(tmp_path / "t"), "clvae.epoch=3"]) == 2
    assert re.search("config.clvae: unknown key.*epoch", capsys.readouterr().err)


@pytest.mark.parametrize("q,group", [(2, 5), (3, 2), (4, 4), (5, 3)])
def test_fsq_codes_and_grid_values_are_inverse(q, group):
    from recbase.tokenizer.modules import fsq_codes_to_values, fsq_digits_to_codes, fsq_round

    codes = torch.arange(q ** group).repeat(2, 1).T  # every code, 2 levels
    values = fsq_codes_to_values(codes, q, group)
    assert values.min() >= -1 and values.max() <= 1
    torch.testing.assert_close(fsq_digits_to_codes(values, q, 2), codes)
    # Rounding any latent lands on the grid.
    rounded = fsq_round(torch.randn(64, 2 * group) * 3, q)
    grid = fsq_codes_to_values(fsq_digits_to_codes(rounded, q, 2), q, group)
    torch.testing.assert_close(rounded, grid)


def test_report_separates_unseen_domains_and_pooled_normalisation(domains, trained):
    from recbase.tokenizer.report import tokenizer_report

    tok, _ = trained["rqkmeans"]
    shifted = domains["movies"].astype(np.float32) + 0.3
    embeddings = {**domains, "shifted-movies": shifted}
    own = tokenizer_report(tok, embeddings)
    assert own["summary"]["trained"]["domains"] == ["movies", "tools"]
    assert own["summary"]["unseen"]["domains"] == ["shifted-movies"]
    # Centred on its own mean, the shifted copy is encoded exactly like the original catalog.
    assert own["domains"]["shifted-movies"]["levels"] == own["domains"]["movies"]["levels"]
    assert own["domains"]["shifted-movies"]["collision_rate"] == own["domains"]["movies"]["collision_rate"]
    pooled = tokenizer_report(tok, embeddings, normalize_new=False)
    assert pooled["domains"]["movies"] == own["domains"]["movies"]
    assert pooled["domains"]["shifted-movies"]["levels"] != own["domains"]["shifted-movies"]["levels"]


def test_neighbour_prefix_share_by_hand():
    from recbase.tokenizer.report import neighbour_prefix_share

    # Two tight pairs, far apart: 0-1 share level 1 only, 2-3 share both levels; scale does not matter (cosine).
    x = np.array([[1, 0], [0.99, 0.1], [0, 3], [0.1, 2.9]], np.float32)
    codes = np.array([[0, 0], [0, 1], [1, 2], [1, 2]])
    assert neighbour_prefix_share(x, codes) == [1.0, 0.5]
    assert neighbour_prefix_share(x, codes, block=1) == [1.0, 0.5]   # queries split across blocks
    # Above `sample` items only a seeded sample of queries is measured, each against the whole catalog.
    sampled = neighbour_prefix_share(x, codes, sample=3, seed=1)
    assert sampled[0] == 1.0 and sampled[1] in (1 / 3, 2 / 3)
    assert sampled == neighbour_prefix_share(x, codes, sample=3, seed=1)
    assert neighbour_prefix_share(x[:1], codes[:1]) == [0.0, 0.0]   # one item has no neighbour


def test_codebook_larger_than_the_catalog_is_refused():
    from recbase.config import ConfigError

    emb = {"books": np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)}
    with pytest.raises(ConfigError, match=r"codebook_size=64 is larger than the 30 training items \(books\)"):
        train_tokenizer(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=64), emb, progress=False)
    with pytest.raises(ConfigError, match=r"^levels=0 is outside the allowed range >= 1$"):
        train_tokenizer(TokenizerConfig(kind="rqkmeans", levels=0, codebook_size=4), emb, progress=False)


def test_train_does_not_replace_an_artifact_without_overwrite(tmp_path, capsys):
    data, emb, art = tmp_path / "data", tmp_path / "emb", tmp_path / "tok"
    write_data(data, {"books": 40})
    embed_folder(data, emb, model="hashing", progress=False)
    args = ["tokenizer", "train", "--data", str(data), "--emb", str(emb), "--out", str(art), "kind=rqkmeans",
            "levels=2", "codebook_size=4", "rqkmeans.iters=2"]
    assert main(args) == 0
    first = load_tokenizer(art).hash
    assert main([*args, "seed=1"]) == 2
    assert "already holds a tokenizer artifact" in capsys.readouterr().err and load_tokenizer(art).hash == first
    assert main([*args, "seed=1", "--overwrite"]) == 0
    assert load_tokenizer(art).hash != first


def test_popularity_orders_each_bucket_by_counts_ties_in_catalog_order():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 0], [3, 3], [1, 2]])
    counts = np.array([2, 7, 0, 2, 4, 1, 9])
    extra = disambiguation_level(codes, codebook_size=4, priority=counts)
    # bucket (1, 2): row 6 (9), row 1 (7), then rows 0 and 3 (2 each) in catalog order; bucket (0, 0): row 4, row 2
    np.testing.assert_array_equal(extra, [2, 1, 1, 3, 0, 0, 0])
    assert collision_rate(np.c_[codes, extra]) == 0.0
    np.testing.assert_array_equal(disambiguation_level(codes, 4, priority=np.zeros(7)), disambiguation_level(codes, 4))
    with pytest.raises(ValueError, match="6 priorities for 7 items"):
        disambiguation_level(codes, 4, priority=counts[:6])


def test_popularity_collision_order_is_kept_in_the_artifact(tmp_path):
    from recbase.errors import UserError

    emb = clustered(300, seed=3)
    counts = np.random.default_rng(0).integers(0, 40, len(emb))
    cfg = TokenizerConfig(kind="rqkmeans", levels=1, codebook_size=32, disambiguate=True, collision_order="popularity")
    cfg.rqkmeans.iters = 5
    tok, _ = train_tokenizer(cfg, {"books": emb}, "synthetic", progress=False, counts={"books": counts})
    tok.save(tmp_path / "pop")
    loaded = load_tokenizer(tmp_path / "pop")
    assert loaded.collision_order == "popularity" and loaded.hash == tok.hash
    stats = loaded.stats_for("books", emb)
    codes = loaded.encode_catalog(emb, stats, "books")
    np.testing.assert_array_equal(codes, tok.encode_catalog(emb, tok.stats_for("books", emb), "books"))
    assert collision_rate(codes) == 0.0 and collision_rate(codes[:, :1]) > 0.5
    for code in np.unique(codes[:, 0]):
        rows = np.flatnonzero(codes[:, 0] == code)
        by_index = counts[rows[np.argsort(codes[rows, 1])]]
        assert (np.diff(by_index) <= 0).all()          # index 0 holds the bucket's most interacted item
    # a catalog the tokenizer was not trained on has no training interactions: catalog order
    np.testing.assert_array_equal(loaded.encode_catalog(emb, stats, "other")[:, 1],
                                  disambiguation_level(codes[:, :1], 32))
    with pytest.raises(UserError, match="interaction counts of 300 items, but the catalog has 299"):
        loaded.encode_catalog(emb[:299], stats, "books")
    loaded.item_counts["books"] = counts + 1           # the counts are part of the content hash
    assert loaded.save(tmp_path / "changed") != tok.hash


def test_collision_order_options_are_checked(tmp_path, capsys):
    from recbase.config import ConfigError
    from recbase.errors import UserError

    emb = {"books": clustered(60, seed=4)}
    with pytest.raises(ConfigError, match=r"^collision_order: 'random' is not one of catalog, popularity$"):
        train_tokenizer(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4, disambiguate=True,
                                        collision_order="random"), emb, progress=False)
    with pytest.raises(ConfigError, match=r"orders the disambiguation level: set disambiguate=true$"):
        train_tokenizer(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4, collision_order="popularity"),
                        emb, progress=False)
    with pytest.raises(UserError, match=r"counts of the 60 items of domain 'books'; got 59$"):
        train_tokenizer(TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=4, disambiguate=True,
                                        collision_order="popularity"), emb, progress=False,
                        counts={"books": np.ones(59)})
    data = tmp_path / "data"
    write_data(data, {"books": 20})
    embed_folder(data, tmp_path / "emb", model="hashing", progress=False)
    assert main(["tokenizer", "train", "--data", str(data), "--emb", str(tmp_path / "emb"), "--out",
                 str(tmp_path / "t"), "kind=rqkmeans", "levels=2", "codebook_size=4", "disambiguate=true",
                 "collision_order=by_price"]) == 2
    err = capsys.readouterr().err.strip()
    assert "collision_order: 'by_price' is not one of catalog, popularity" in err and "\n" not in err
