"""A prefix trie of a catalog's valid code tuples, stored as dense tensors for vectorised beam search.

A prefix of depth d (its first d codes) is one int64 key, the codes read as digits in base K. Per depth the valid
prefixes are a sorted key tensor; because sorting is lexicographic, the children of a prefix at depth d are one
contiguous run of the depth d+1 tensor, so "allowed next codes" is a CSR structure: ``child_ptr[d]`` (start of
each prefix's run, plus the end) and ``child_code[d]`` (the last code of each depth d+1 prefix). Expanding a batch
of beams is then a handful of tensor ops on the device, never a Python walk per token. Complete tuples map back
to the catalog's items (several items when their codes collide).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CodeTrie:
    levels: int
    codebook_size: int
    prefix_keys: list[torch.Tensor]   # depth 0..L: sorted unique keys of the valid prefixes (depth 0: one root)
    child_ptr: list[torch.Tensor]     # depth 0..L-1: [n_d + 1] start of each prefix's children at depth d+1
    child_code: list[torch.Tensor]    # depth 0..L-1: [n_{d+1}] the code each depth-(d+1) prefix adds
    item_ptr: torch.Tensor            # [n_L + 1] start of each complete tuple's items in item_index
    item_index: torch.Tensor          # [N] catalog row of each item, grouped by tuple
    item_ids: list[str]

    @classmethod
    def build(cls, codes: np.ndarray, item_ids: list[str], codebook_size: int,
              device: torch.device | str = "cpu") -> "CodeTrie":
        """Trie of ``codes`` ([N, L] ints in [0, K)), one row per catalog item ``item_ids``."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) != len(item_ids):
            raise ValueError(f"codes of shape {codes.shape} do not match {len(item_ids)} item ids")
        if len(codes) == 0:
            raise ValueError("cannot build a trie of an empty catalog")
        n, levels = codes.shape
        k = int(codebook_size)
        if codes.min() < 0 or codes.max() >= k:
            raise ValueError(f"codes outside [0, {k})")
        if levels * np.log2(k) >= 63:
            raise ValueError(f"{levels} levels of {k} codes do not fit an int64 prefix key")
        keys = [np.zeros(1, dtype=np.int64)]
        running = np.zeros(n, dtype=np.int64)
        full_keys = None
        for d in range(levels):
            running = running * k + codes[:, d]
            keys.append(np.unique(running))
            full_keys = running
        child_ptr, child_code = [], []
        for d in range(levels):
            parents = keys[d + 1] // k
            ptr = np.searchsorted(parents, keys[d], side="left")
            child_ptr.append(np.r_[ptr, len(parents)])
            child_code.append(keys[d + 1] % k)
        tuple_of_item = np.searchsorted(keys[levels], full_keys)
        item_index = np.argsort(tuple_of_item, kind="stable")
        item_ptr = np.r_[0, np.cumsum(np.bincount(tuple_of_item, minlength=len(keys[levels])))]
        t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
        return cls(levels, k, [t(a) for a in keys], [t(a) for a in child_ptr], [t(a) for a in child_code],
                   t(item_ptr), t(item_index), list(item_ids))

    @property
    def n_tuples(self) -> int:
        return len(self.prefix_keys[self.levels])

    def expand(self, depth: int, prefix_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All valid one-code extensions of the depth-``depth`` prefixes ``prefix_idx`` ([B]).

        Returns ``(parent, child)``: for each extension, its position in ``prefix_idx`` and its index among the
        depth+1 prefixes (the added code is ``child_code[depth][child]``).
        """
        ptr = self.child_ptr[depth]
        start = ptr[prefix_idx]
        count = ptr[prefix_idx + 1] - start
        parent = torch.repeat_interleave(torch.arange(len(prefix_idx), device=ptr.device), count)
        offsets = torch.cumsum(count, 0) - count
        child = start[parent] + torch.arange(len(parent), device=ptr.device) - offsets[parent]
        return parent, child

    def allowed_mask(self, depth: int, prefix_idx: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, K]`` mask of the codes that may follow each depth-``depth`` prefix."""
        parent, child = self.expand(depth, prefix_idx)
        mask = torch.zeros(len(prefix_idx), self.codebook_size, dtype=torch.bool, device=parent.device)
        mask[parent, self.child_code[depth][child]] = True
        return mask

    def prefix_index(self, depth: int, codes: torch.Tensor) -> torch.Tensor:
        """Index among the depth-``depth`` prefixes of each row's first ``depth`` codes (``codes`` [B, >= depth]);
        a ValueError names the first row whose prefix is not in the catalog."""
        key = torch.zeros(len(codes), dtype=torch.int64, device=codes.device)
        for d in range(depth):
            key = key * self.codebook_size + codes[:, d]
        keys = self.prefix_keys[depth]
        idx = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
        missing = torch.nonzero(keys[idx] != key).flatten()
        if len(missing):
            row = int(missing[0])
            raise ValueError(f"row {row}: codes {codes[row, :depth].tolist()} are not a prefix in the catalog")
        return idx

    def allowed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, L, K]``: at each level, the codes the catalog allows after the row's own prefix
        (``codes`` [B, L], complete tuples of the catalog)."""
        return torch.stack([self.allowed_mask(d, self.prefix_index(d, codes)) for d in range(self.levels)], 1)

    def tuple_codes(self, tuple_idx: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, L]`` of complete tuples."""
        key = self.prefix_keys[self.levels][tuple_idx]
        digits = []
        for _ in range(self.levels):
            digits.append(key % self.codebook_size)
            key = key // self.codebook_size
        return torch.stack(digits[::-1], dim=-1)

    def items_of(self, tuple_idx: int) -> list[str]:
        """Catalog items whose codes are tuple ``tuple_idx`` (more than one when codes collide)."""
        a, b = int(self.item_ptr[tuple_idx]), int(self.item_ptr[tuple_idx + 1])
        return [self.item_ids[i] for i in self.item_index[a:b].tolist()]
