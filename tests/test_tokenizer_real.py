"""CL-VAE against plain RQ-VAE on the real MovieLens + Amazon Scientific catalogs (slow: trains twice).

Hashing embeddings keep it fast. On them CL-VAE fills every code of every level while plain RQ-VAE leaves codes
unused; the collision comparison is made with MiniLM embeddings in docs/tokenizer.md (on hashing features the
entropy term raises collisions, see there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recbase.data.ingest import ingest
from recbase.tokenizer.collisions import collision_rate
from recbase.tokenizer.embed import embed_folder
from recbase.tokenizer.train import TokenizerConfig, load_domain_embeddings, train_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.slow
def test_clvae_uses_more_codes_than_plain_rqvae(tmp_path):
    ingest("movielens", DATA / "movielens-latest-small", tmp_path / "data")
    ingest("recbole", DATA / "amazon-scientific", tmp_path / "data", domain="amazon-scientific", kind="product")
    embed_folder(tmp_path / "data", tmp_path / "emb", model="hashing", progress=False)
    embeddings, model = load_domain_embeddings(tmp_path / "data", tmp_path / "emb")
    assert {d: len(e) for d, e in embeddings.items()} == {"amazon-scientific": 4385, "movielens-latest-small": 9742}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for name, plain in (("clvae", False), ("plain", True)):
            cfg = TokenizerConfig(levels=4, codebook_size=64)
            cfg.clvae.epochs, cfg.clvae.epochs_per_level = 16, 3
            if plain:
                cfg.clvae.curriculum = cfg.clvae.kmeans_init = cfg.clvae.reinit_dead = False
                cfg.clvae.entropy_weight = 0.0
            tok, _ = train_tokenizer(cfg, embeddings, model, progress=False)
            codes = {d: tok.encode(e, tok.stats_for(d, e)) for d, e in embeddings.items()}
            union = np.concatenate(list(codes.values()))
            results[name] = [len(np.unique(union[:, level])) for level in range(4)]
            assert all(collision_rate(c) < 0.25 for c in codes.values()), name
    finally:
        torch.set_num_threads(threads)
    assert min(results["clvae"]) >= 0.9 * 64
    assert sum(results["clvae"]) > sum(results["plain"])
