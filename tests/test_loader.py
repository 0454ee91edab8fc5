"""Packed loader: batch contract, no attention across users, exact resume with 0 and 2 workers, splitting."""
from __future__ import annotations

import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from shards_world import TOKENIZER_HASH, make_world  # noqa: E402

from recbase.data.loader import PackedLoader, _to_torch, make_batch, pack_rows  # noqa: E402
from recbase.data.shard_format import ShardError, read_manifest, read_shard  # noqa: E402
from recbase.data.shards import ShardConfig, build_shards  # noqa: E402

SEQ = 96


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    world = make_world(tmp_path_factory.mktemp("world"))
    cfg = ShardConfig(data_dir=str(world / "data"), heldout_domains=["news"], codes_path=str(world / "codes.parquet"),
                      out_dir=str(world / "shards"), tokens_per_shard=2500, tokens_per_block=600)
    return build_shards(cfg)


def all_users(root: Path, split: str = "train") -> list[list[int]]:
    out = []
    for shard in read_manifest(root)["shards"]:
        if shard["split"] == split:
            for tokens, offsets, _ in read_shard(root, shard):
                out += [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    return out


def segments(batch) -> list[tuple[list[int], list[int], list[int]]]:
    """(input ids, labels, position ids) of every non-padding segment, cut by cu_seqlens."""
    ids, labels, pos = (batch[k].reshape(-1).tolist() for k in ("input_ids", "labels", "position_ids"))
    cu = batch["cu_seqlens"].tolist()
    return [(ids[a:b], labels[a:b], pos[a:b]) for a, b in zip(cu[:-1], cu[1:])]


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])), k


def test_batch_contract_and_no_attention_across_users(shards):
    loader = PackedLoader(shards, seq_len=SEQ, micro_batch_size=3, num_epochs=1, expected_tokenizer_hash=TOKENIZER_HASH)
    pad = loader.vocab.pad_id
    chunks = []
    n_batches = 0
    for batch in loader:
        n_batches += 1
        B, S = batch["input_ids"].shape
        assert (B, S) == (3, SEQ) and batch["input_ids"].dtype == torch.int64
        cu = batch["cu_seqlens"]
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == B * S
        assert batch["max_seqlen"] == int((cu[1:] - cu[:-1]).max())
        assert batch["n_label_tokens"] == int((batch["labels"] != -100).sum())
        # Segments never straddle rows.
        assert all(int(c) % S == 0 for c in cu if int(c) % S == 0) and set(range(0, B * S + 1, S)) <= set(cu.tolist())
        for ids, labels, pos in segments(batch):
            assert pos == list(range(len(ids)))                    # positions restart for every segment
            assert labels[0] == -100                               # nothing predicts across a boundary
            if ids[0] == pad:                                      # padding: unlabelled
                assert set(ids) == {pad} and set(labels) == {-100}
            else:
                assert labels[1:] == ids[1:]
                chunks.append(ids)
    # Every user comes out exactly once, split into chunks of at most SEQ tokens, in order.
    want = sorted(c for u in all_users(shards) for c in (u[i:i + SEQ] for i in range(0, len(u), SEQ)))
    assert sorted(chunks) == want
    assert n_batches > 5


def test_unpacked_mode_has_one_user_per_row_and_more_rows(shards):
    packed = sum(1 for _ in PackedLoader(shards, seq_len=SEQ, micro_batch_size=1, num_epochs=1))
    rows = 0
    for batch in PackedLoader(shards, seq_len=SEQ, micro_batch_size=1, num_epochs=1, packed=False):
        segs = [s for s in segments(batch) if s[0][0] != 0]
        assert len(segs) == 1
        rows += 1
    n_chunks = sum((len(u) + SEQ - 1) // SEQ for u in all_users(shards))
    assert rows == n_chunks and packed < rows


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(shards, num_workers):
    def make():
        return PackedLoader(shards, seq_len=SEQ, micro_batch_size=2, num_workers=num_workers, seed=3,
                            shuffle_buffer=50, num_epochs=2)

    full = list(make())
    cut = 7
    first = make()
    it = iter(first)
    head = [next(it) for _ in range(cut)]
    state = first.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    assert_same(head + list(resumed), full)          # crosses the epoch boundary too
    assert len(full) > 2 * cut


def test_data_order_depends_on_seed_and_epoch(shards):
    a = list(islice(PackedLoader(shards, seq_len=SEQ, micro_batch_size=2, seed=0), 4))
    b = list(islice(PackedLoader(shards, seq_len=SEQ, micro_batch_size=2, seed=1), 4))
    assert not torch.equal(a[0]["input_ids"], b[0]["input_ids"])
    loader = PackedLoader(shards, seq_len=SEQ, micro_batch_size=2, seed=0, num_epochs=2)
    batches = list(loader)
    half = len(batches) // 2
    assert not torch.equal(batches[0]["input_ids"], batches[half]["input_ids"])


def test_ranks_split_the_data_and_more_streams_than_shards_still_step(shards):
    n_shards = len([s for s in read_manifest(shards)["shards"] if s["split"] == "train"])
    world = n_shards + 2                                     # more ranks than shards: split by block
    seen = []
    for rank in range(world):
        loader = PackedLoader(shards, seq_len=SEQ, micro_batch_size=2, rank=rank, world_size=world, num_epochs=1)
        batches = list(loader)
        assert batches, f"rank {rank} yielded nothing"
        seen += [tuple(s[0]) for b in batches for s in segments(b) if s[0][0] != 0]
    want = [tuple(c) for u in all_users(shards) for c in (u[i:i + SEQ] for i in range(0, len(u), SEQ))]
    assert sorted(seen) == sorted(want)                      # each chunk on exactly one rank


def test_fewer_blocks_than_ranks_or_workers(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("tiny"), domains=("books", "news"), n_users=6)
    cfg = ShardConfig(data_dir=str(world / "data"), heldout_domains=["news"], codes_path=str(world / "codes.parquet"),
                      out_dir=str(world / "shards"), holdout=0)
    root = build_shards(cfg)
    assert read_manifest(root)["totals"]["train"]["blocks"] == 1
    want = sorted(c for u in all_users(root) for c in (u[i:i + SEQ] for i in range(0, len(u), SEQ)))

    def chunks(loader):
        return sorted(s[0] for b in loader for s in segments(b) if s[0][0] != 0)

    # One rank, two workers: one worker has nothing and says so; the rank still sees every user exactly once.
    with pytest.warns(UserWarning, match="yields nothing"):
        assert chunks(PackedLoader(root, seq_len=SEQ, micro_batch_size=2, num_workers=2, num_epochs=1)) == want
    # Three ranks, one block: every rank can step (the block repeats, with a warning).
    for rank in range(3):
        with pytest.warns(UserWarning, match="repeats block"):
            loader = PackedLoader(root, seq_len=SEQ, micro_batch_size=2, rank=rank, world_size=3, num_epochs=1)
            assert chunks(loader) == want


def test_valid_split_labels_only_the_held_out_items(shards):
    loader = PackedLoader(shards, split="valid", seq_len=512, micro_batch_size=2, num_epochs=1)
    levels = loader.vocab.levels
    n_users = 0
    for batch in loader:
        for ids, labels, _ in segments(batch):
            if ids[0] == loader.vocab.pad_id:
                continue
            n_users += 1
            assert [x for x in labels if x != -100] == ids[-levels:]
    assert n_users == read_manifest(shards)["totals"]["valid"]["users"]


def test_wrong_tokenizer_hash_and_state_mismatch_are_refused(shards):
    with pytest.raises(ValueError, match="tokenizer"):
        PackedLoader(shards, expected_tokenizer_hash="another-tokenizer")
    state = PackedLoader(shards, seq_len=SEQ).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        PackedLoader(shards, seq_len=SEQ * 2).load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_truncated_shard_is_reported_by_name_while_loading(shards, tmp_path, num_workers):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(shards, root)
    shard = read_manifest(root)["shards"][1]
    path = root / shard["path"]
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ShardError, match=path.name):
        list(PackedLoader(root, seq_len=SEQ, micro_batch_size=2, num_epochs=1, num_workers=num_workers))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 200), min_size=1, max_size=25), seq_len=st.integers(4, 128),
       batch=st.integers(1, 4), open_rows=st.integers(1, 8), label_from=st.integers(1, 20))
def test_packing_keeps_every_chunk_once_and_never_crosses_users(lengths, seq_len, batch, open_rows, label_from):
    users = [(np.arange(n, dtype=np.int64) + 1000 * (u + 1), label_from) for u, n in enumerate(lengths)]
    rows = list(pack_rows(iter(users), seq_len, open_rows))
    assert all(0 < sum(len(t) for t, _ in r) <= seq_len for r in rows)
    got = []
    for start in range(0, len(rows), batch):
        b = _to_torch(make_batch(rows[start:start + batch], batch, seq_len, pad_id=0))
        for ids, labels, pos in segments(b):
            assert pos == list(range(len(ids)))
            if ids[0] == 0:
                assert set(labels) == {-100}
                continue
            user, offset = divmod(ids[0], 1000)
            assert all(i // 1000 == user for i in ids)           # one user per segment
            first = max(1, label_from - offset % 1000)
            assert labels[:first] == [-100] * min(first, len(ids)) and labels[first:] == ids[first:]
            got.append(tuple(ids))
    want = [tuple(t[a:a + seq_len].tolist()) for t, _ in users for a in range(0, len(t), seq_len)]
    assert sorted(got) == sorted(want)
