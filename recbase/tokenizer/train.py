"""Train a tokenizer of any kind on the union of the training domains and save it as an artifact.

Each training domain is normalised with its own statistics (stored in the artifact) before the union is formed,
so every domain is centred the same way it will be when encoded. With ``collision_order=popularity`` the artifact
also keeps each training domain's interaction counts per item, which order the items sharing a code tuple.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recbase.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, ConfigError, Range, check_ranges, to_dict
from recbase.data.sequences import item_counts, load_users
from recbase.data.tables import read_item_ids
from recbase.errors import UserError
from recbase.io import atomic_write_text
from recbase.tokenizer import normalize
from recbase.tokenizer.artifact import CONFIG_FILE, KINDS, Tokenizer
from recbase.tokenizer.clvae import CLVAEConfig, train_clvae
from recbase.tokenizer.collisions import COLLISION_ORDERS
from recbase.tokenizer.embed import load_embeddings, read_texts, select_domains
from recbase.tokenizer.fsq import FSQConfig, train_fsq
from recbase.tokenizer.rqkmeans import RQKmeansConfig, train_rqkmeans

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


RANGES = {"levels": AT_LEAST_1, "codebook_size": Range(2), "seed": AT_LEAST_0,
          "clvae.latent_dim": AT_LEAST_1, "clvae.epochs": AT_LEAST_1, "clvae.batch_size": AT_LEAST_1,
          "clvae.lr": POSITIVE, "clvae.beta": AT_LEAST_0, "clvae.epochs_per_level": AT_LEAST_1,
          "clvae.min_epochs_per_level": AT_LEAST_1, "clvae.plateau_tol": AT_LEAST_0, "clvae.kmeans_iters": AT_LEAST_1,
          "clvae.dead_threshold": AT_LEAST_0, "clvae.entropy_weight": AT_LEAST_0,
          "clvae.entropy_temperature": POSITIVE, "rqkmeans.iters": AT_LEAST_1, "fsq.fsq_levels": Range(2),
          "fsq.epochs": AT_LEAST_1, "fsq.batch_size": AT_LEAST_1, "fsq.lr": POSITIVE}


@dataclass
class TokenizerConfig:
    kind: str = "clvae"                  # clvae | rqkmeans | fsq
    levels: int = 4                      # code levels L (concept ids per item)
    codebook_size: int = 256             # codes per level K
    normalization: str = "center"        # none | center | whiten, per domain, before training and encoding
    disambiguate: bool = False           # add a level holding each item's index among items sharing its tuple
    collision_order: str = "catalog"     # that index in catalog order, or popularity: most interactions first
    seed: int = 0                        # seeds initialisation, shuffling and k-means
    clvae: CLVAEConfig = field(default_factory=CLVAEConfig)
    rqkmeans: RQKmeansConfig = field(default_factory=RQKmeansConfig)
    fsq: FSQConfig = field(default_factory=FSQConfig)


@contextlib.contextmanager
def deterministic_algorithms():
    """Make torch pick its deterministic kernels for the block, then restore the caller's setting.

    With several CPU threads, ``index_add_`` (the k-means centroid sums) adds in an order that changes from run
    to run; the last-bit differences grow through training, so the same command gave a different tokenizer (and
    hash, and every downstream shard) each time. The deterministic kernels cost little at these sizes.
    """
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def train_tokenizer(cfg: TokenizerConfig, embeddings: dict[str, np.ndarray], embedder: str = "",
                    progress: bool = True, counts: dict[str, np.ndarray] | None = None
                    ) -> tuple[Tokenizer, list[dict]]:
    """Train on ``{domain: embeddings [N_d, D]}``; returns the tokenizer and its per-epoch history.

    ``counts`` (``{domain: interactions per item [N_d]}``) is needed, and kept, when ``collision_order`` is
    popularity. The same inputs and config give the same artifact, bit for bit, on a given CPU build of torch.
    """
    with deterministic_algorithms():
        return _train(cfg, embeddings, embedder, progress, counts or {})


def _check_collision_order(cfg: TokenizerConfig, embeddings: dict[str, np.ndarray],
                           counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The counts the artifact keeps: every training domain's under ``popularity``, none otherwise."""
    if cfg.collision_order not in COLLISION_ORDERS:
        raise ConfigError(f"collision_order: {cfg.collision_order!r} is not one of {', '.join(COLLISION_ORDERS)}")
    if cfg.collision_order == "catalog":
        return {}
    if not cfg.disambiguate:
        raise ConfigError("collision_order=popularity orders the disambiguation level: set disambiguate=true")
    for domain, emb in embeddings.items():
        found = counts.get(domain)
        if found is None or len(found) != len(emb):
            got = "none" if found is None else f"{len(found)}"
            raise UserError(f"collision_order=popularity needs the interaction counts of the {len(emb)} items of "
                            f"domain {domain!r}; got {got}")
    return {d: np.asarray(counts[d], dtype=np.int64) for d in embeddings}


def _train(cfg: TokenizerConfig, embeddings: dict[str, np.ndarray], embedder: str,
           progress: bool, counts: dict[str, np.ndarray]) -> tuple[Tokenizer, list[dict]]:
    if cfg.kind not in KINDS:
        raise ConfigError(f"kind: {cfg.kind!r} is not one of {', '.join(KINDS)}")
    check_ranges(cfg, RANGES)
    if not embeddings:
        raise UserError("no training domains")
    kept_counts = _check_collision_order(cfg, embeddings, counts)
    n_items = sum(len(e) for e in embeddings.values())
    if cfg.codebook_size > n_items:
        raise ConfigError(f"codebook_size={cfg.codebook_size} is larger than the {n_items} training items "
                          f"({', '.join(embeddings)}): most codes could never be used; set codebook_size <= {n_items}")
    dims = {d: e.shape[1] for d, e in embeddings.items()}
    if len(set(dims.values())) != 1:
        raise UserError(f"training domains have different embedding dims: {dims}")
    stats = {d: normalize.compute_stats(e, cfg.normalization) for d, e in embeddings.items()}
    x = torch.from_numpy(np.concatenate([normalize.apply(e, stats[d], cfg.normalization)
                                         for d, e in embeddings.items()]))
    common = dict(kind=cfg.kind, levels=cfg.levels, codebook_size=cfg.codebook_size, input_dim=x.shape[1],
                  embedder=embedder, normalization=cfg.normalization, domain_stats=stats,
                  disambiguate=cfg.disambiguate, collision_order=cfg.collision_order, item_counts=kept_counts,
                  training=to_dict(cfg))
    history: list[dict] = []
    if cfg.kind == "clvae":
        result = train_clvae(x, cfg.levels, cfg.codebook_size, cfg.clvae, cfg.seed, progress)
        tok = Tokenizer(**common, encoder=result.encoder, decoder=result.decoder, codebooks=result.codebooks)
        history = result.history
    elif cfg.kind == "rqkmeans":
        tok = Tokenizer(**common, codebooks=train_rqkmeans(x, cfg.levels, cfg.codebook_size, cfg.rqkmeans, cfg.seed,
                                                            progress))
    else:
        encoder, decoder, history = train_fsq(x, cfg.levels, cfg.codebook_size, cfg.fsq, cfg.seed, progress)
        tok = Tokenizer(**common, encoder=encoder, decoder=decoder, fsq_levels=cfg.fsq.fsq_levels)
    return tok, history


def load_domain_embeddings(data_dir: str | Path, emb_dir: str | Path,
                           domains: list[str] | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Embeddings of the chosen domains, each checked against its ``items.parquet``, and the embedder name."""
    out, models = {}, set()
    for domain_dir in select_domains(data_dir, domains):
        ids, texts = read_texts(domain_dir)
        emb, meta = load_embeddings(emb_dir, domain_dir.name, ids, texts)
        out[domain_dir.name] = emb
        models.add(meta["model"])
    if len(models) > 1:
        raise UserError(f"{emb_dir}: domains were embedded with different models: {sorted(models)}")
    return out, models.pop()


def train_from_folders(cfg: TokenizerConfig, data_dir: str | Path, emb_dir: str | Path, out_dir: str | Path,
                       domains: list[str] | None = None, progress: bool = True, overwrite: bool = False,
                       exclude_last: int = 0) -> Tokenizer:
    """``recbase tokenizer train``: train on the domains' embeddings and write the artifact to ``out_dir``.

    Under ``collision_order=popularity`` the counts are each domain's interactions per item without every user's
    last ``exclude_last`` items, so that held-out targets play no part in an item's code.
    An artifact already in ``out_dir`` is replaced only with ``overwrite``: codes, shards and models made with it
    name its hash, and would silently stop matching."""
    existing = Path(out_dir) / CONFIG_FILE
    if existing.exists() and not overwrite:
        raise UserError(f"{existing}: {out_dir} already holds a tokenizer artifact, which codes, shards and models "
                        f"may depend on; choose another --out, or pass --overwrite to replace it")
    embeddings, model = load_domain_embeddings(data_dir, emb_dir, domains)
    counts = {}
    if cfg.collision_order == "popularity":
        for domain in embeddings:
            ids = read_item_ids(Path(data_dir) / domain)
            counts[domain] = item_counts(load_users(Path(data_dir) / domain, ids), len(ids), exclude_last)
    tok, history = train_tokenizer(cfg, embeddings, model, progress, counts)
    tok.save(out_dir)
    atomic_write_text(Path(out_dir) / HISTORY_FILE, json.dumps(history, indent=1) + "\n")
    log.info("tokenizer %s (%s, %d x %d) trained on %s → %s", tok.hash[:12], cfg.kind, cfg.levels,
             cfg.codebook_size, ", ".join(embeddings), out_dir)
    return tok
