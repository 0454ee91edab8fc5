"""The streaming training loader: WebDataset shards -> packed fixed-length batches, resumable mid-epoch.

Data order is a pure function of (seed, epoch, rank, worker), which is what makes exact resume possible
(WebDataset keeps no position of its own):

* **Shard order** is a seeded permutation per epoch. The global stream ``g = rank * W + worker`` of
  ``G = world_size * W`` streams (``W = max(1, num_workers)``) reads shards ``order[g::G]``. With fewer shards than
  streams the split goes down to blocks (tar entries): rank ``r`` takes blocks ``r::world_size`` and its worker
  ``w`` every ``W``-th of those; a worker left without a block yields nothing (with a warning) while its rank's
  other workers feed the rank. With fewer blocks than ranks, rank ``r`` re-reads block ``r % n_blocks`` (a warning
  says the data repeats), so every rank has batches and can step.
* **Users** of the blocks pass a seeded WebDataset shuffle buffer, are cut into chunks of at most ``seq_len`` tokens
  (a longer user becomes several chunks, each starting at position 0 with an unlabelled first token, because
  keeping attention inside one row is what varlen attention needs), and are packed first-fit into a few open rows
  (a row leaves when full, or the fullest one when no open row has room). Labels are -100 at padding and at each chunk's first token,
  so no position predicts across a user boundary; in the ``valid`` split they are also -100 before the user's
  held-out targets.
* **Resume**: the loader counts batches consumed per worker and yields them in a fixed round-robin order over
  workers (not the DataLoader's arrival order), so ``state_dict()`` after batch n, restored into a fresh loader,
  regenerates each worker's stream and skips the batches already consumed: the batches that follow are exactly
  those of an uninterrupted run (same ``num_workers`` and ``world_size`` required).

By default the loader is endless (``num_epochs=None``): epochs follow each other with a new shard order, so ranks
with a few batches more or less stay in step; the trainer stops by step count.
"""
from __future__ import annotations

import random
import warnings
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import webdataset as wds

from recbase.data.shard_format import read_manifest, read_shard
from recbase.errors import UserError
from recbase.vocab import Vocab

Segment = tuple[np.ndarray, int]   # chunk tokens, index of its first labelled token


class PackedLoader:
    """Iterable over training batches (the dict of docs/formats.md) from a shard folder.

    ``shard_dir`` is ``shards/<name>`` (holding ``manifest.json``). ``packed=False`` gives one user chunk per row,
    padded to ``seq_len``, for comparison. ``expected_tokenizer_hash`` refuses shards of another tokenizer.
    """

    def __init__(self, shard_dir: str | Path, split: str = "train", seq_len: int = 1024, micro_batch_size: int = 8,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0,
                 expected_tokenizer_hash: str | None = None, packed: bool = True, shuffle: bool | None = None,
                 shuffle_buffer: int = 10_000, num_epochs: int | None = None, prefetch_factor: int = 4):
        if seq_len < 2 or micro_batch_size < 1:
            raise UserError(f"seq_len must be >= 2 and micro_batch_size >= 1, got {seq_len}, {micro_batch_size}")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside 0..{world_size - 1}")
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(self.shard_dir, expected_tokenizer_hash)
        self.vocab = Vocab.from_dict(self.manifest["vocab"])
        self.shards = sorted((s for s in self.manifest["shards"] if s["split"] == split), key=lambda s: s["path"])
        if not self.shards:
            raise UserError(f"{self.shard_dir}: no '{split}' shards (splits: "
                            f"{', '.join(self.manifest['split']['splits'])})")
        self.split, self.seq_len, self.micro_batch_size = split, seq_len, micro_batch_size
        self.rank, self.world_size, self.num_workers, self.seed = rank, world_size, num_workers, seed
        self.packed = packed
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.shuffle_buffer = shuffle_buffer
        self.num_epochs = num_epochs
        self.prefetch_factor = prefetch_factor
        self._reset_epoch(0)
        for w in range(self._n_streams):   # block counts do not change between epochs: warn once, here
            for note in stream_plan(self.shards, seed, 0, self.shuffle, rank, world_size, num_workers, w)[1]:
                warnings.warn(f"{self.shard_dir}: {note}")

    # ------------------------------------------------------------------------------------------ state

    @property
    def _n_streams(self) -> int:
        return max(1, self.num_workers)

    def _reset_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._consumed = [0] * self._n_streams
        self._done = [False] * self._n_streams
        self._next = 0

    def state_dict(self) -> dict:
        """Position after the last batch handed out; :meth:`load_state_dict` continues right after it."""
        return {"epoch": self._epoch, "consumed": list(self._consumed), "done": list(self._done),
                "next_worker": self._next, "num_workers": self.num_workers, "rank": self.rank,
                "world_size": self.world_size, "seed": self.seed, "seq_len": self.seq_len,
                "micro_batch_size": self.micro_batch_size, "packed": self.packed, "split": self.split,
                "shuffle": self.shuffle, "shuffle_buffer": self.shuffle_buffer}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position; the settings that shape the data stream must equal the saved ones."""
        for key in ("num_workers", "rank", "world_size", "seed", "seq_len", "micro_batch_size", "packed", "split",
                    "shuffle", "shuffle_buffer"):
            if state[key] != getattr(self, key):
                raise UserError(f"loader state was saved with {key}={state[key]!r} but this loader has "
                                f"{getattr(self, key)!r}; the data order would differ, so it cannot resume")
        self._epoch = int(state["epoch"])
        self._consumed = [int(c) for c in state["consumed"]]
        self._done = [bool(d) for d in state["done"]]
        self._next = int(state["next_worker"])

    # ------------------------------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict]:
        while self.num_epochs is None or self._epoch < self.num_epochs:
            n = 0
            for batch in self._epoch_batches():
                n += 1
                yield batch
            if n == 0 and not any(self._consumed):
                raise RuntimeError(f"{self.shard_dir}: rank {self.rank} got no batch in epoch {self._epoch}")
            self._reset_epoch(self._epoch + 1)

    def _epoch_batches(self) -> Iterator[dict]:
        """This epoch's batches in round-robin worker order, starting after the consumed ones."""
        if self.num_workers == 0:
            stream = _BatchStream(self, self._epoch, list(self._consumed))
            for batch in stream:
                if batch.pop("_end", False):
                    break
                batch.pop("_worker")
                self._consumed[0] += 1
                yield _to_torch(batch)
            self._done[0] = True
            return
        dataset = _BatchStream(self, self._epoch, list(self._consumed))
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                             prefetch_factor=self.prefetch_factor, multiprocessing_context="fork",
                                             collate_fn=_identity)
        pending = {w: deque() for w in range(self.num_workers)}
        it = iter(loader)
        while not all(self._done):
            w = self._next
            if self._done[w]:
                self._next = (w + 1) % self.num_workers
                continue
            while not pending[w]:
                batch = next(it)
                pending[batch["_worker"]].append(batch)
            batch = pending[w].popleft()
            self._next = (w + 1) % self.num_workers
            if batch.pop("_end", False):
                self._done[w] = True
                continue
            batch.pop("_worker")
            self._consumed[w] += 1
            yield _to_torch(batch)

    def __repr__(self) -> str:
        return (f"PackedLoader({str(self.shard_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"micro_batch_size={self.micro_batch_size}, rank={self.rank}/{self.world_size}, "
                f"num_workers={self.num_workers}, packed={self.packed}, shards={len(self.shards)})")


class _BatchStream(torch.utils.data.IterableDataset):
    """One epoch of one rank: each worker (or the main process) produces its own stream of batches."""

    def __init__(self, loader: PackedLoader, epoch: int, skip: list[int]):
        super().__init__()
        self.cfg = {k: getattr(loader, k) for k in ("seq_len", "micro_batch_size", "rank", "world_size", "seed",
                                                    "packed", "shuffle", "shuffle_buffer", "num_workers")}
        self.shard_dir, self.shards, self.vocab = loader.shard_dir, loader.shards, loader.vocab
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        c = self.cfg
        g = c["rank"] * max(1, c["num_workers"]) + w
        if info is not None:
            torch.set_num_threads(1)
        plan, _ = stream_plan(self.shards, c["seed"], self.epoch, c["shuffle"], c["rank"], c["world_size"],
                              c["num_workers"], w)
        users = self._users(plan)
        if c["shuffle"] and c["shuffle_buffer"] > 1:
            rng = random.Random(hash_seed(c["seed"], self.epoch, g))
            users = wds.filters.shuffle(bufsize=c["shuffle_buffer"], initial=max(1, c["shuffle_buffer"] // 10),
                                        rng=rng)(users)
        rows = pack_rows(users, c["seq_len"]) if c["packed"] else single_rows(users, c["seq_len"])
        for i, group in enumerate(_groups(rows, c["micro_batch_size"])):
            if i < self.skip[w]:
                continue
            batch = make_batch(group, c["micro_batch_size"], c["seq_len"], self.vocab.pad_id)
            batch["_worker"] = w
            yield batch
        yield {"_worker": w, "_end": True}

    def _users(self, plan) -> Iterator[tuple[np.ndarray, int]]:
        for shard, keep in plan:
            for tokens, offsets, meta in read_shard(self.shard_dir, shard, keep):
                label_from = meta.get("label_from")
                for u in range(len(offsets) - 1):
                    yield tokens[offsets[u]:offsets[u + 1]], (label_from[u] if label_from else 1)


def stream_plan(shards: list[dict], seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                num_workers: int, worker: int) -> tuple[list[tuple[dict, set | None]], list[str]]:
    """The (shard, blocks to keep or None for all) one worker of one rank reads in one epoch, and warnings."""
    order = list(range(len(shards)))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(order)).tolist()
    shards = [shards[i] for i in order]
    workers = max(1, num_workers)
    n_streams, g = world_size * workers, rank * workers + worker
    if len(shards) >= n_streams:
        return [(s, None) for s in shards[g::n_streams]], []
    notes = []
    blocks = [(i, b) for i, s in enumerate(shards) for b in range(s["blocks"])]
    if len(blocks) >= world_size:
        rank_blocks = blocks[rank::world_size]
    else:
        notes.append(f"{len(blocks)} blocks for {world_size} ranks; rank {rank} repeats block "
                     f"{rank % len(blocks)} so that every rank can step (build smaller blocks)")
        rank_blocks = [blocks[rank % len(blocks)]]
    mine = rank_blocks[worker::workers]
    if not mine:
        notes.append(f"worker {worker} of rank {rank} has no block and yields nothing (more workers than the "
                     f"rank's {len(rank_blocks)} blocks)")
    plan: dict[int, set] = {}
    for i, b in mine:
        plan.setdefault(i, set()).add(b)
    return [(shards[i], keep) for i, keep in sorted(plan.items())], notes


def _identity(batch):
    return batch


def hash_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _chunks(users, seq_len: int) -> Iterator[Segment]:
    """Users cut into pieces of at most ``seq_len`` tokens; a piece's first labelled token is >= 1."""
    for tokens, label_from in users:
        for a in range(0, len(tokens), seq_len):
            yield tokens[a:a + seq_len], max(1, label_from - a)


def pack_rows(users, seq_len: int, open_rows: int = 8) -> Iterator[list[Segment]]:
    """First-fit packing over a few open rows: a chunk goes to the first open row with room; when none has room
    and ``open_rows`` are open, the fullest row is emitted. Deterministic, and fuller than one open row."""
    rows: list[list] = []   # [tokens used, segments]
    for seg in _chunks(users, seq_len):
        n = len(seg[0])
        target = next((r for r in rows if r[0] + n <= seq_len), None)
        if target is None:
            if len(rows) == open_rows:
                fullest = max(range(len(rows)), key=lambda i: rows[i][0])
                yield rows.pop(fullest)[1]
            target = [0, []]
            rows.append(target)
        target[0] += n
        target[1].append(seg)
        if target[0] == seq_len:
            rows.remove(target)
            yield target[1]
    for _, segs in rows:
        yield segs


def single_rows(users, seq_len: int) -> Iterator[list[Segment]]:
    """One chunk per row (the unpacked baseline)."""
    for seg in _chunks(users, seq_len):
        yield [seg]


def _groups(rows, size: int) -> Iterator[list[list[Segment]]]:
    group = []
    for row in rows:
        group.append(row)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def make_batch(rows: list[list[Segment]], batch_size: int, seq_len: int, pad_id: int) -> dict:
    """The batch dict of docs/formats.md; missing rows (end of a stream) are all padding."""
    input_ids = np.full((batch_size, seq_len), pad_id, np.int64)
    labels = np.full((batch_size, seq_len), -100, np.int64)
    position_ids = np.empty((batch_size, seq_len), np.int64)
    arange = np.arange(seq_len, dtype=np.int64)
    seglens = []
    for r in range(batch_size):
        pos = 0
        for tokens, first in rows[r] if r < len(rows) else ():
            n = len(tokens)
            input_ids[r, pos:pos + n] = tokens
            if first < n:
                labels[r, pos + first:pos + n] = tokens[first:]
            position_ids[r, pos:pos + n] = arange[:n]
            seglens.append(n)
            pos += n
        if pos < seq_len:
            position_ids[r, pos:] = arange[:seq_len - pos]
            seglens.append(seq_len - pos)
    cu = np.zeros(len(seglens) + 1, np.int32)
    np.cumsum(seglens, out=cu[1:])
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "cu_seqlens": cu,
            "max_seqlen": int(max(seglens)), "n_label_tokens": int((labels != -100).sum())}


def _to_torch(batch: dict) -> dict:
    """Arrays cross the worker boundary as pickled numpy (cheaper than shared-memory tensors at these sizes)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
