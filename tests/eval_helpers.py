"""Builders for the evaluation tests: a tiny random Qwen2 export and a one-domain world of eval inputs.

pyarrow is imported by the builders that write Parquet only: the GPU suite runs the scoring tests on machines
without it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from recbase.vocab import Vocab


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only adds spin-wait contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(vocab: Vocab, seed: int = 0, max_positions: int = 512, hidden: int = 32) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab.model_vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so scores differ clearly between candidates
        model.lm_head.weight.mul_(20.0)
    return model


def save_export(model, vocab: Vocab, tokenizer_hash: str, path: Path, **meta) -> Path:
    """A Hugging Face folder with the ``recbase.json`` an export writes (weight hashes included)."""
    from recbase.io import sha256_file

    model.save_pretrained(path)
    weights = {p.name: sha256_file(p) for p in path.glob("*.safetensors")}
    (path / "recbase.json").write_text(json.dumps({"tokenizer_hash": tokenizer_hash, "vocab": vocab.to_dict(),
                                                   "weights_sha256": weights, **meta}))
    return path


def write_eval_set(path: Path, rows: list[dict], tokenizer_hash: str | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("user_id", pa.string()), ("history", pa.list_(pa.int32())),
                        ("candidates", pa.list_(pa.string())), ("candidate_tokens", pa.list_(pa.list_(pa.int32()))),
                        ("labels", pa.list_(pa.int8())), ("target", pa.string())])
    if tokenizer_hash:
        schema = schema.with_metadata({"tokenizer_hash": tokenizer_hash})
    table = pa.Table.from_pylist(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def build_world(root: Path, vocab: Vocab, tokenizer_hash: str = "tok-abc", domain: str = "books",
                n_items: int = 40, n_users: int = 12, seq_len: int = 8, n_neg: int = 5, seed: int = 0) -> dict:
    """A held-out domain with items, interactions, embeddings, codes.parquet, an eval set and a model export.

    Each user's last interaction is the target; the history is every earlier item; negatives are catalog items
    the user never interacted with.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    items = [f"i{j:03d}" for j in range(n_items)]
    codes = rng.integers(0, vocab.codebook_size, size=(n_items, vocab.levels))
    codes[1] = codes[0]  # one collision: two items share a code tuple
    tokens = vocab.encode_codes(codes)
    data = root / "data" / domain
    data.mkdir(parents=True)
    pq.write_table(pa.table({"domain": [domain] * n_items, "item_id": items,
                             "text": [f"item {i}" for i in items]}), data / "items.parquet")
    users, inter_items, ts, rows = [], [], [], []
    for u in range(n_users):
        seq = rng.choice(n_items, size=seq_len, replace=False)
        users += [f"u{u}"] * seq_len
        inter_items += [items[j] for j in seq]
        ts += list(range(seq_len))
        negatives = rng.choice(np.setdiff1d(np.arange(n_items), seq), size=n_neg, replace=False)
        cands = [int(seq[-1])] + [int(j) for j in negatives]
        order = rng.permutation(len(cands))
        cands = [cands[i] for i in order]
        history = [vocab.bos_id] + tokens[seq[:-1]].reshape(-1).tolist()
        rows.append({"user_id": f"u{u}", "history": history, "candidates": [items[j] for j in cands],
                     "candidate_tokens": tokens[cands].tolist(),
                     "labels": [int(j == seq[-1]) for j in cands], "target": items[seq[-1]]})
    pq.write_table(pa.table({"domain": [domain] * len(users), "user_id": users, "item_id": inter_items,
                             "timestamp": pa.array(ts, pa.int64())}), data / "interactions.parquet")
    emb_dir = root / "embeddings"
    emb_dir.mkdir()
    np.save(emb_dir / f"{domain}.npy", rng.normal(size=(n_items, 16)).astype(np.float16))
    (emb_dir / f"{domain}.json").write_text(json.dumps({
        "model": "test", "dim": 16, "n_items": n_items,
        "item_ids_sha256": hashlib.sha256("\n".join(items).encode()).hexdigest()}))
    codes_table = pa.table({"domain": [domain] * n_items, "item_id": items,
                            "codes": pa.array(codes.tolist(), pa.list_(pa.int32()))})
    meta = {"tokenizer_hash": tokenizer_hash, "codebook_size": str(vocab.codebook_size)}
    pq.write_table(codes_table.replace_schema_metadata(meta), root / "codes.parquet")
    eval_path = write_eval_set(root / "shards" / "main" / "eval" / f"{domain}.parquet", rows, tokenizer_hash)
    model_dir = save_export(tiny_model(vocab), vocab, tokenizer_hash, root / "model")
    return {"data_dir": root / "data", "embeddings_dir": emb_dir, "codes": root / "codes.parquet",
            "eval_dir": eval_path.parent, "model": model_dir, "rows": rows, "items": items, "codes_array": codes}
