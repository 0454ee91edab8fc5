"""A pretrained model in use: the top-K items of a catalog it has never seen, for one user's history.

``Recommender.from_pretrained(model, tokenizer)`` loads a Hugging Face export (or DeepSpeed checkpoint) and the
tokenizer artifact it was trained with, refusing a pair whose tokenizer hashes differ. ``load_catalog`` reads a
catalog (an ``items.parquet``, a domain folder, or a raw dataset through any reader of :mod:`recbase.data.readers`),
embeds its texts with the tokenizer's embedder and encodes them with the domain's own normalisation statistics,
computed from this catalog alone (a training domain keeps its stored ones), so a new domain stays zero-shot.
Embeddings and codes are cached on disk under a key that hashes the embedder, the ids and the texts (and, for codes,
the tokenizer), so a second start on the same catalog embeds nothing.

``recommend`` runs the catalog-constrained beam search of :mod:`recbase.eval.retrieval` (real items only, every
item of a code tuple sharing its score); ``score`` ranks a given list with :mod:`recbase.eval.scoring`. A score is
log P(item's concept tokens | history).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recbase.errors import UserError
from recbase.eval.model_io import EvalModel, check_tokenizer_hash, load_eval_model
from recbase.eval.retrieval import Retriever
from recbase.eval.scoring import CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.tokenizer.artifact import CONFIG_FILE, Tokenizer, load_tokenizer
from recbase.tokenizer.embed import (check_texts, embed_items, item_ids_sha256, load_embeddings, make_embedder,
                                     read_verified_npy, save_verified_npy, write_npy_digest)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$RECBASE_CACHE``, else ``$XDG_CACHE_HOME/recbase`` (``~/.cache/recbase``)."""
    if os.environ.get("RECBASE_CACHE"):
        return Path(os.environ["RECBASE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recbase"


class UnknownItems(UserError):
    """Item ids that are not in the catalog; ``field`` names the request field that held them."""

    def __init__(self, field: str, items: list[str], catalog: str):
        self.field, self.items = field, items
        shown = ", ".join(repr(i) for i in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        super().__init__(f"{field}: {len(items)} item id(s) not in catalog {catalog!r}: {shown}")


@dataclass
class Recommendation:
    item_id: str
    score: float   # log P(item's concept tokens | history)
    text: str

    def to_dict(self) -> dict:
        return {"item_id": self.item_id, "score": self.score, "text": self.text}


@dataclass
class Catalog:
    """One domain's items, their concept tokens ``[N, L]`` and the trie of their code tuples."""

    domain: str
    source: str
    item_ids: list[str]
    texts: list[str]
    tokens: np.ndarray
    trie: CodeTrie
    row: dict[str, int]

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows_of(self, items: list[str], field: str) -> list[int]:
        """Catalog rows of ``items``; any unknown id is an :class:`UnknownItems` naming ``field``."""
        unknown = [i for i in items if i not in self.row]
        if unknown:
            raise UnknownItems(field, unknown, self.domain)
        return [self.row[i] for i in items]


def read_catalog_table(source: str | Path, fmt: str | None = None, domain: str | None = None,
                       **reader_options) -> tuple[str, list[str], list[str]]:
    """(domain, item ids, texts) of a catalog.

    ``source`` is an items Parquet file (``domain, item_id, text`` as written by ``recbase ingest``), a domain
    folder holding one, or, with ``fmt``, a raw dataset read by that reader (no user filters: every item with
    metadata is kept). Duplicate ids and empty texts are errors naming the file, row and field.
    """
    from recbase.data.tables import ITEMS_FILE, read_table

    source = Path(source)
    if fmt is not None:
        from recbase.data.ingest import read_domain

        tables = read_domain(fmt, source, domain, min_user_interactions=0, max_history=0, **reader_options)
        table, path, name = tables.items, source, tables.domain
    else:
        path = source / ITEMS_FILE if source.is_dir() else source
        if not path.is_file():
            raise UserError(f"{path}: no items table (give an items.parquet, a domain folder holding one, "
                                    f"or a raw dataset with its format)")
        table = read_table(path, required=("item_id", "text"))
        name = domain or _table_domain(table, path)
    ids, texts = check_texts(table, path)
    first: dict[str, int] = {}
    for row, item_id in enumerate(ids):
        if item_id is None:
            raise UserError(f"{path}: row {row}: field 'item_id' is empty")
        if item_id in first:
            raise UserError(f"{path}: row {row}: field 'item_id' {item_id!r} repeats row {first[item_id]}")
        first[item_id] = row
    if not ids:
        raise UserError(f"{path}: the catalog has no items")
    return name, [str(i) for i in ids], [str(t) for t in texts]


def _table_domain(table, path: Path) -> str:
    """The table's single ``domain`` value, else the name of the folder holding it."""
    if "domain" in table.column_names:
        values = table.column("domain").unique().to_pylist()
        if len(values) == 1 and values[0]:
            return str(values[0])
    return path.parent.name


class Recommender:
    """A model and its tokenizer, loaded once; catalogs are loaded (and cached) per domain."""

    def __init__(self, model: EvalModel, tokenizer: Tokenizer, cache_dir: str | Path | None = None,
                 beam_width: int = 20, batch_tokens: int = 8192):
        if model.vocab.levels != tokenizer.code_width or model.vocab.codebook_size != tokenizer.codebook_size:
            raise UserError(f"model {model.path} has {model.vocab.levels} levels of {model.vocab.codebook_size} "
                             f"codes, the tokenizer {tokenizer.code_width} of {tokenizer.codebook_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.beam_width = beam_width
        self.scorer = CandidateScorer(model.model, model.vocab.levels, model.vocab.bos_id,
                                      batch_tokens=batch_tokens, pad_id=model.vocab.pad_id)
        self._embedder = None
        self.catalogs: dict[str, Catalog] = {}   # loaded so far, by domain

    @classmethod
    def from_pretrained(cls, model: str | Path, tokenizer: str | Path, device: str = "auto", dtype: str = "auto",
                        **kwargs) -> "Recommender":
        """Load the model at ``model`` and the tokenizer artifact at ``tokenizer``; their hashes must agree."""
        tok = load_tokenizer(tokenizer)
        em = load_eval_model("model", model, device, dtype, tok)
        check_tokenizer_hash(em, {str(Path(tokenizer) / CONFIG_FILE): tok.hash})
        return cls(em, tok, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.model.parameters()).device

    # --- catalogs ------------------------------------------------------------------------------------------
    def load_catalog(self, source: str | Path, fmt: str | None = None, domain: str | None = None,
                     progress: bool = True, **reader_options) -> Catalog:
        """Read, embed (cached) and encode (cached) a catalog, and keep it under its domain name for
        :meth:`recommend` and :meth:`score`; see :func:`read_catalog_table` for ``source``."""
        name, ids, texts = read_catalog_table(source, fmt, domain, **reader_options)
        tok = self.tokenizer
        key = hashlib.sha256(json.dumps([tok.embedder, item_ids_sha256(ids), item_ids_sha256(texts)])
                             .encode()).hexdigest()[:32]
        folder = self.cache_dir / "catalogs" / key
        start = time.perf_counter()
        emb = self._embeddings(folder, name, ids, texts, progress)
        codes = self._codes(folder, name, emb)
        tokens = self.model.vocab.encode_codes(codes)
        trie = CodeTrie.build(codes, ids, self.model.vocab.codebook_size, self.device)
        seen = "its stored" if name in tok.domain_stats else "its own catalog's"
        log.info("catalog %s: %d items from %s, normalised with %s statistics, %d code tuples (%.1fs)", name,
                 len(ids), source, seen, len(trie.prefix_keys[-1]), time.perf_counter() - start)
        self.catalogs[name] = Catalog(name, str(source), ids, texts, tokens, trie, {i: r for r, i in enumerate(ids)})
        return self.catalogs[name]

    def _get_embedder(self):
        if self._embedder is None:
            self._embedder = make_embedder(self.tokenizer.embedder)
        return self._embedder

    def _embeddings(self, folder: Path, domain: str, ids: list[str], texts: list[str], progress: bool) -> np.ndarray:
        """The catalog's embeddings from the cache when their digest matches, else embedded (resumably) now; the
        text encoder is only loaded when something has to be embedded."""
        npy = folder / f"{domain}.npy"
        emb = read_verified_npy(npy)
        if emb is not None and len(emb) == len(ids):
            return emb
        for stale in (npy, folder / f"{domain}.json"):
            stale.unlink(missing_ok=True)
        embed_items(domain, ids, texts, folder, self._get_embedder(), progress=progress)
        emb, _ = load_embeddings(folder, domain, ids)
        write_npy_digest(npy, emb)
        return emb

    def _codes(self, folder: Path, domain: str, emb: np.ndarray) -> np.ndarray:
        """The catalog's codes ``[N, code_width]``, from the cache when their digest matches, else encoded now."""
        tok = self.tokenizer
        stats = "stored" if domain in tok.domain_stats else "catalog"   # which normalisation statistics
        npy = folder / f"codes-{tok.hash[:16]}-{stats}.npy"
        codes = read_verified_npy(npy)
        if codes is not None and len(codes) == len(emb):
            return codes
        codes = tok.encode_catalog(emb, tok.stats_for(domain, emb), domain).astype(np.int64)
        save_verified_npy(npy, codes)
        return codes

    # --- recommendation ------------------------------------------------------------------------------------
    def catalog(self, name: str | Catalog | None = None) -> Catalog:
        """A loaded catalog by domain name; ``None`` is the only one loaded."""
        if isinstance(name, Catalog):
            return name
        if name is None:
            if len(self.catalogs) == 1:
                return next(iter(self.catalogs.values()))
            raise UserError("no catalog loaded yet (load_catalog)" if not self.catalogs else
                             f"{len(self.catalogs)} catalogs loaded ({', '.join(self.catalogs)}): name one")
        if name not in self.catalogs:
            raise UserError(f"catalog {name!r} is not loaded; loaded: {', '.join(self.catalogs) or '-'}")
        return self.catalogs[name]

    def history_tokens(self, history: list[str], catalog: str | Catalog | None = None) -> np.ndarray:
        """``bos`` then each history item's concept tokens, oldest first."""
        cat = self.catalog(catalog)
        rows = cat.rows_of(list(history), "history")
        return np.concatenate([[self.model.vocab.bos_id], cat.tokens[rows].reshape(-1)]).astype(np.int64)

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  catalog: str | Catalog | None = None) -> list[Recommendation]:
        """The ``k`` most likely next items of ``catalog`` after ``history`` (oldest first), best first.

        The beam is widened to ``k`` plus the history's distinct items, so excluding what the user already has
        still leaves ``k`` items (fewer only when the catalog is smaller).
        """
        if k < 1:
            raise UserError(f"k={k}: must be at least 1")
        cat = self.catalog(catalog)
        tokens = self.history_tokens(history, cat)
        seen = set(history) if exclude_history else set()
        retriever = Retriever(self.model.model, cat.trie, self.model.vocab.n_special, self.model.vocab.bos_id,
                              beam_width=max(self.beam_width, k + len(seen)), pad_id=self.model.vocab.pad_id)
        found = retriever.retrieve(tokens)
        out = [Recommendation(i, s, cat.texts[cat.row[i]]) for i, s in zip(found.items, found.scores)
               if i not in seen]
        return out[:k]

    def score(self, history: list[str], candidates: list[str],
              catalog: str | Catalog | None = None) -> list[Recommendation]:
        """``candidates`` (items of ``catalog``) ranked by their score after ``history``, best first (ties keep
        the given order)."""
        if not candidates:
            raise UserError("candidates: the list is empty")
        cat = self.catalog(catalog)
        rows = cat.rows_of(list(candidates), "candidates")
        logp = self.scorer.score_user(self.history_tokens(history, cat), cat.tokens[rows]).sum(axis=1)
        order = np.argsort(-logp, kind="stable")
        return [Recommendation(candidates[i], float(logp[i]), cat.texts[rows[i]]) for i in order]
