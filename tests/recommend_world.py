"""A tokenizer, a model trained on a known pattern, and a catalog neither has seen: what the recommend and serve
tests use.

The tokenizer (RQ-Kmeans on hashing embeddings) is trained on the demo world's movies; the catalog is its news
domain. The tiny Qwen2 is trained, with plain torch, on sequences that walk a fixed cycle of news items, so after
item ``cycle[j]`` the right answer is ``cycle[j + 1]`` and a test can check what the model returns.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recbase.data.synthetic import generate_world
from recbase.tokenizer.embed import HASHING_MODEL, embed_folder, load_embeddings
from recbase.tokenizer.train import TokenizerConfig, train_tokenizer
from recbase.vocab import Vocab
from eval_helpers import save_export, tiny_model

CYCLE = 8          # news items on the learned cycle


def build(root: Path, steps: int = 150) -> dict:
    data, emb = root / "data", root / "embeddings"
    generate_world(data, domains=["movies", "news"], items_per_domain=60, users_per_domain=20)
    embed_folder(data, emb, HASHING_MODEL, progress=False)
    movies, _ = load_embeddings(emb, "movies")
    cfg = TokenizerConfig(kind="rqkmeans", levels=2, codebook_size=16)
    cfg.rqkmeans.iters = 10
    tok, _ = train_tokenizer(cfg, {"movies": movies}, HASHING_MODEL, progress=False)
    tok.save(root / "tokenizer")

    # The news catalog encoded as the recommender must encode it: its own statistics, not the movies'.
    news_ids = [str(i) for i in load_ids(data / "news")]
    news_emb, _ = load_embeddings(emb, "news", news_ids)
    codes = tok.encode_catalog(news_emb, tok.compute_stats(news_emb))
    vocab = Vocab(levels=tok.levels, codebook_size=tok.codebook_size)
    tokens = vocab.encode_codes(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    cycle = np.flatnonzero(counts[inverse.reshape(-1)] == 1)[:CYCLE]   # items whose code tuple is theirs alone
    assert len(cycle) == CYCLE, "too many collisions in the news catalog for the test pattern"
    model = tiny_model(vocab, max_positions=64)
    train_on_cycle(model, vocab, tokens[cycle], steps)
    save_export(model, vocab, tok.hash, root / "model")
    return {"root": root, "data": data, "catalog": data / "news", "tokenizer": root / "tokenizer",
            "model": root / "model", "ids": news_ids, "codes": codes, "cycle": [news_ids[i] for i in cycle]}


def load_ids(domain_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(domain_dir / "items.parquet", columns=["item_id"]).column("item_id").to_pylist()


def train_on_cycle(model, vocab: Vocab, cycle_tokens: np.ndarray, steps: int) -> None:
    """Next-token training on every rotation of the cycle, so each item is followed by the next from any start."""
    n = len(cycle_tokens)
    rows = [np.concatenate([[vocab.bos_id], cycle_tokens[np.arange(s, s + n) % n].reshape(-1)]) for s in range(n)]
    batch = torch.as_tensor(np.stack(rows))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
