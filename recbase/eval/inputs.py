"""What evaluation derives from its inputs besides the eval sets themselves: the tokenizer hash each input
states, the items behind the users' history tokens and the domain's popularity counts. Every file is read through
the module that owns its format (docs/formats.md).

Every malformed row is an error naming the file, the row and the field: a silently wrong eval set would give a
plausible but meaningless AUC.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from recbase.data.codes import read_tokenizer_hash
from recbase.data.evalsets import EvalSet, eval_set_tokenizer_hash
from recbase.data.shard_format import MANIFEST, read_manifest
from recbase.errors import UserError
from recbase.tokenizer.artifact import CONFIG_FILE, load_tokenizer


def list_eval_domains(eval_dir: str | Path) -> list[str]:
    domains = sorted(p.stem for p in Path(eval_dir).glob("*.parquet") if not p.name.startswith("."))
    if not domains:
        raise UserError(f"no eval sets (<domain>.parquet) in {eval_dir}")
    return domains


def input_tokenizer_hashes(eval_paths: list[Path], codes_path: str = "", tokenizer_dir: str = "") -> dict[str, str]:
    """Tokenizer hash stated by each input that states one, keyed by the file stating it.

    Sources: the eval sets' Parquet metadata, the shards' ``manifest.json`` beside the ``eval/`` folder,
    ``codes.parquet`` metadata and the tokenizer artifact (whose content hash is verified as it loads).
    """
    hashes = {str(p): eval_set_tokenizer_hash(p) for p in eval_paths}
    for shard_dir in sorted({p.parent.parent for p in eval_paths}):
        if (shard_dir / MANIFEST).exists():
            hashes[str(shard_dir / MANIFEST)] = str(read_manifest(shard_dir)["tokenizer_hash"])
    if codes_path:
        hashes[str(codes_path)] = read_tokenizer_hash(codes_path)
    if tokenizer_dir:
        hashes[str(Path(tokenizer_dir) / CONFIG_FILE)] = load_tokenizer(tokenizer_dir).hash
    return hashes


def history_items(eval_set: EvalSet, sequences: dict[str, list[str]], levels: int, source: str = "interactions",
                  item_tokens: dict[str, np.ndarray] | None = None) -> tuple[list[list[str]], int]:
    """The items behind each eval user's history tokens, by the held-out rule; and how many users are unverified.

    The eval-set builder holds out a user's last items and keeps every earlier item as history, so the target
    sits right after the history's ``n`` items. Among the target's occurrences at position ``>= n``, the first
    whose ``n`` preceding items encode to exactly the eval set's history tokens is taken (checked when
    ``item_tokens``, item -> its L tokens, is given; items without tokens are then left out, as the builder does).
    When none verifies, the first occurrence is used and the user is counted as unverified. A user or target
    absent from ``sequences`` is an error.
    """
    out, unverified = [], 0
    for row, (user, target, hist) in enumerate(zip(eval_set.user_ids, eval_set.targets, eval_set.histories)):
        seq = sequences.get(user)
        if seq is None:
            raise UserError(f"{eval_set.path}: row {row}: user {user!r} is not in {source}")
        if item_tokens is not None:  # the eval-set builder skips interactions of items without codes
            seq = [item for item in seq if item in item_tokens]
        n_hist = (len(hist) - 1) // levels
        positions = [p for p, item in enumerate(seq) if item == target]
        if not positions:
            raise UserError(f"{eval_set.path}: row {row}: target {target!r} of user {user!r} is not among the "
                            f"user's interactions in {source}")
        chosen = None
        for p in (p for p in positions if p >= n_hist):
            items = seq[p - n_hist:p]
            if item_tokens is None or _encodes_to(items, item_tokens, hist[1:]):
                chosen = items
                break
        if chosen is None or item_tokens is None:
            unverified += 1
        out.append(chosen if chosen is not None else seq[max(0, positions[0] - n_hist):positions[0]])
    return out, unverified


def _encodes_to(items: list[str], item_tokens: dict[str, np.ndarray], tokens: np.ndarray) -> bool:
    try:
        encoded = np.concatenate([item_tokens[i] for i in items]) if items else np.zeros(0, np.int64)
    except KeyError:
        return False
    return np.array_equal(encoded, tokens)


def popularity_counts(sequences: dict[str, list[str]], eval_set: EvalSet) -> Counter:
    """Interactions per item in the domain, with each eval user's held-out positives removed."""
    counts: Counter = Counter()
    for seq in sequences.values():
        counts.update(seq)
    for cands, labels in zip(eval_set.candidates, eval_set.labels):
        for item, label in zip(cands, labels.tolist()):
            if label == 1:
                counts[item] -= 1
    return counts


def check_candidates(eval_set: EvalSet, item_tokens: dict[str, np.ndarray], codes_path: str) -> None:
    """Every candidate of the eval set is an item of the catalog in ``codes_path`` with the same tokens: the
    catalog's trie and the catalog PMI are only defined for its own items."""
    for row, (cands, tokens) in enumerate(zip(eval_set.candidates, eval_set.candidate_tokens)):
        for item, tok in zip(cands, tokens):
            if item not in item_tokens:
                raise UserError(f"{eval_set.path}: row {row}, field 'candidates': item {item!r} is not in the "
                                f"{eval_set.domain!r} catalog of {codes_path}")
            if not np.array_equal(item_tokens[item], tok):
                raise UserError(f"{eval_set.path}: row {row}, field 'candidate_tokens': item {item!r} has tokens "
                                f"{tok.tolist()}, the catalog {codes_path} gives {item_tokens[item].tolist()}")
