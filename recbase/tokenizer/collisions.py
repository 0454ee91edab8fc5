"""Code-tuple collisions: two items of one catalog with the same L codes are indistinguishable to the model.

The collision rate is the share of items that are not the first holder of their tuple (``1 - unique / items``),
i.e. the share that would need a disambiguation index above 0. The optional extra level gives each item its
index among the items sharing its tuple, so every item gets a unique tuple as long as no bucket holds more than K
items. The index is arbitrary to the model, which can only memorise it; ordering a bucket by the items' training
interactions (``popularity``) at least gives the low indices to the items users most often mean.
"""
from __future__ import annotations

import numpy as np

from recbase.errors import UserError

COLLISION_ORDERS = ("catalog", "popularity")   # order of a bucket's items on the disambiguation level


def tuple_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket id per item, bucket sizes) for codes [N, L]; bucket ids are in order of first appearance."""
    codes = np.ascontiguousarray(np.asarray(codes, dtype=np.int64))
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first, inverse, counts = np.unique(codes, axis=0, return_index=True, return_inverse=True,
                                          return_counts=True)
    # Relabel so bucket ids follow catalog order rather than lexicographic order of tuples.
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)], counts[np.argsort(rank)]


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full tuple was already taken by an earlier item of the same catalog."""
    n = len(codes)
    if n == 0:
        return 0.0
    _, sizes = tuple_ids(codes)
    return float(1.0 - len(sizes) / n)


def disambiguation_level(codes: np.ndarray, codebook_size: int, priority: np.ndarray | None = None) -> np.ndarray:
    """Extra code per item [N]: its index among the items sharing its tuple.

    Items of a bucket are in catalog order, or with ``priority`` [N] (e.g. training interactions per item) the
    highest priority first, ties in catalog order. Raises when a bucket holds more than ``codebook_size`` items,
    since the index must be a valid code.
    """
    bucket, sizes = tuple_ids(codes)
    if len(sizes) and sizes.max() > codebook_size:
        worst = int(np.argmax(sizes))
        example = np.asarray(codes)[np.flatnonzero(bucket == worst)[0]].tolist()
        raise UserError(f"{int(sizes.max())} items share the code tuple {example}, more than the codebook size "
                        f"{codebook_size}: a disambiguation level cannot separate them; train with more levels "
                        f"or a larger codebook")
    if priority is None:
        order = np.argsort(bucket, kind="stable")
    else:
        priority = np.asarray(priority)
        if priority.shape != bucket.shape:
            raise ValueError(f"{len(priority)} priorities for {len(bucket)} items")
        order = np.lexsort((np.arange(len(bucket)), -priority, bucket))   # last key first: bucket, priority, row
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    index = np.empty(len(bucket), dtype=np.int64)
    index[order] = np.arange(len(bucket)) - np.repeat(starts, sizes)
    return index


def catalog_index(codes: np.ndarray, item_ids: list[str]) -> dict[tuple[int, ...], list[str]]:
    """Code tuple → the items holding it, in catalog order (more than one item where tuples collide)."""
    if len(codes) != len(item_ids):
        raise ValueError(f"{len(codes)} code rows for {len(item_ids)} items")
    index: dict[tuple[int, ...], list[str]] = {}
    for row, item_id in zip(np.asarray(codes).tolist(), item_ids):
        index.setdefault(tuple(row), []).append(item_id)
    return index
