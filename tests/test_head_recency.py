"""The head's recency biases fitted listwise: the same form as the head, a fit that finds the recency a domain
has, a checked file, and biases that stay fixed while the rest of the head trains."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recbase.cli import main
from recbase.errors import UserError
from recbase.train.config import load_train_config
from recbase.train.embedding_head import RECENCY_BUCKETS, EmbeddingHead
from recbase.train.head_recency import (Slates, domain_slates, fit_recency, fix_recency, read_recency,
                                        recency_scores, write_recency)
from recbase.train.optim import param_groups


def test_the_scores_are_the_attention_heads_with_a_zero_query():
    g = torch.Generator().manual_seed(0)
    dim, n = 8, 20                       # 20 history items: the buckets' last one covers the oldest five
    vectors = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    candidates = torch.nn.functional.normalize(torch.randn(5, dim, generator=g), dim=-1)
    head = EmbeddingHead(4, dim, "attention")         # its query projection starts at zero
    with torch.no_grad():
        head.recency.copy_(torch.randn(RECENCY_BUCKETS, generator=g))
    distance = torch.arange(n - 1, -1, -1)[None]      # vectors in time order: the last is the latest
    predicted = head(torch.randn(1, 4, generator=g), vectors, torch.ones(1, n, dtype=torch.bool), distance)
    history = vectors.flip(0)[None]                   # latest first
    scores = recency_scores(head.recency.detach(), history, torch.ones(1, n, dtype=torch.bool), candidates[None])
    torch.testing.assert_close(scores[0], candidates @ predicted[0], atol=1e-5, rtol=0)


def _domain(root, name: str, seed: int = 0) -> None:
    """A domain whose users move to the nearest unseen item of the latest one: its recency is all in the latest."""
    rng = np.random.default_rng(seed)
    n_items, n_users, length = 120, 40, 12
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    items = [f"{name}{j}" for j in range(n_items)]
    users, seen_items, times = [], [], []
    for u in range(n_users):
        seq = [int(rng.integers(n_items))]
        while len(seq) < length:
            sims = unit @ unit[seq[-1]]
            sims[seq] = -np.inf
            seq.append(int(np.argmax(sims)))
        users += [f"u{u}"] * length
        seen_items += [items[j] for j in seq]
        times += list(range(length))
    folder = root / "data" / name
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"domain": [name] * n_items, "item_id": items, "text": items}), folder / "items.parquet")
    pq.write_table(pa.table({"domain": [name] * len(users), "user_id": users, "item_id": seen_items,
                             "timestamp": pa.array(times, pa.int64())}), folder / "interactions.parquet")
    (root / "embeddings").mkdir(exist_ok=True)
    np.save(root / "embeddings" / f"{name}.npy", emb.astype(np.float16))
    (root / "embeddings" / f"{name}.json").write_text(json.dumps({
        "model": "test", "dim": 16, "n_items": n_items,
        "item_ids_sha256": hashlib.sha256("\n".join(items).encode()).hexdigest()}))


def test_the_fit_finds_that_the_next_item_follows_the_latest(tmp_path):
    _domain(tmp_path, "walk")
    slates = domain_slates(tmp_path / "data", tmp_path / "embeddings", "walk", seed=0)
    assert len(slates) == 40 * (12 - 2)                       # every position from the third item on
    history, mask, candidates = slates.batch(torch.arange(len(slates)))
    assert mask.sum(1).tolist()[:10] == list(range(2, 12))    # a user's histories grow by one item
    assert candidates.shape[1] == 11
    biases, _ = fit_recency([slates], seed=0, steps=200)
    assert biases[0] > biases[1:4].max() + 0.5, biases
    fitted = recency_scores(torch.from_numpy(biases), history, mask, candidates)
    flat = recency_scores(torch.zeros(RECENCY_BUCKETS), history, mask, candidates)   # the bar: the plain mean
    assert (fitted.argmax(1) == 0).float().mean() > (flat.argmax(1) == 0).float().mean()


def test_the_command_writes_a_file_that_reads_back_and_a_changed_file_is_refused(tmp_path, capsys):
    for name in ("a", "b"):
        _domain(tmp_path, name, seed=ord(name))
    out = tmp_path / "recency.json"
    assert main(["head-recency", "--data", str(tmp_path / "data"), "--embeddings", str(tmp_path / "embeddings"),
                 "--domains", "a,b", "--out", str(out), "--steps", "20"]) == 0
    saved = json.loads(out.read_text())
    assert saved["domains"] == ["a", "b"] and saved["slates"] == [400, 400]
    torch.testing.assert_close(read_recency(out), torch.tensor(saved["biases"]))
    saved["biases"][0] += 0.5
    out.write_text(json.dumps(saved))
    with pytest.raises(UserError, match="field 'sha256' does not match"):
        read_recency(out)
    out.write_text(json.dumps({**saved, "biases": [0.0] * 3}))
    with pytest.raises(UserError, match="field 'biases' must list 16 numbers"):
        read_recency(out)


def test_fixed_biases_stay_while_the_query_trains(tmp_path):
    path = tmp_path / "recency.json"
    biases = np.linspace(1, -1, RECENCY_BUCKETS).astype(np.float32)
    write_recency(path, biases, {"domains": ["x"]})
    g = torch.Generator().manual_seed(1)
    head = EmbeddingHead(8, 6, "attention")
    fix_recency(head, path)
    opt = torch.optim.AdamW(param_groups(head, 0.01), lr=0.05)
    vectors = torch.nn.functional.normalize(torch.randn(5, 6, generator=g), dim=-1)
    distance = torch.arange(4, -1, -1)[None].expand(3, 5)
    for _ in range(5):
        pred = head(torch.randn(3, 8, generator=g), vectors, torch.ones(3, 5, dtype=torch.bool), distance)
        loss = (1 - pred @ vectors[0]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(head.recency.detach(), torch.from_numpy(biases))
    assert head.proj.weight.abs().sum() > 0                    # the query did train


def test_the_option_needs_an_attention_head():
    assert load_train_config("tiny.json", ["model.embedding_head=tok", "model.embedding_head_recency=r.json"]
                             ).model.embedding_head_recency == "r.json"
    with pytest.raises(Exception, match="model.embedding_head_recency"):
        load_train_config("tiny.json", ["model.embedding_head_recency=r.json"])
    with pytest.raises(Exception, match="model.embedding_head_recency"):
        load_train_config("tiny.json", ["model.embedding_head=tok", "model.embedding_head_kind=linear",
                                        "model.embedding_head_recency=r.json"])


def test_slates_hold_rows_not_vectors():
    vectors = torch.eye(3)
    slates = Slates(vectors, torch.tensor([[2, 1, -1]]), torch.tensor([[0, 1]]))
    history, mask, candidates = slates.batch(torch.tensor([0]))
    assert mask.tolist() == [[True, True, False]]
    torch.testing.assert_close(history[0, :2], vectors[[2, 1]])
    torch.testing.assert_close(candidates[0], vectors[[0, 1]])
