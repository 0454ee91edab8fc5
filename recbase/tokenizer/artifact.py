"""The tokenizer artifact: a folder with ``config.json`` and ``weights.safetensors``, and the object that
encodes items with it.

Encoding needs only this module, :mod:`modules`, :mod:`normalize` and :mod:`collisions` — never the training
code — so an item catalog of a new domain is encoded by the saved artifact exactly as it was trained. The
content hash covers the config and every tensor; shards and checkpoints carry it, and loading refuses an
artifact whose files no longer match it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from recbase.errors import UserError
from recbase.io import atomic_path, atomic_write_text
from recbase.tokenizer import normalize
from recbase.tokenizer.collisions import COLLISION_ORDERS, disambiguation_level
from recbase.tokenizer.modules import (MLP, fsq_codes_to_values, fsq_digits_to_codes, fsq_group_size, fsq_round,
                                       residual_codes, residual_vectors)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
KINDS = ("clvae", "rqkmeans", "fsq")


class ArtifactError(UserError):
    """A tokenizer folder that is missing, incomplete or does not match its content hash."""


@dataclass
class Tokenizer:
    """A trained quantiser plus the normalisation statistics of its training domains.

    ``clvae``: encoder MLP → residual codebooks [L, K, latent] → decoder MLP.
    ``rqkmeans``: residual codebooks [L, K, input_dim] applied to the normalised embedding, no networks.
    ``fsq``: encoder MLP → L groups of ``g`` dims, each rounded to ``fsq_levels`` values → decoder MLP.
    """

    kind: str
    levels: int
    codebook_size: int
    input_dim: int
    embedder: str
    normalization: str
    domain_stats: dict[str, normalize.DomainStats | None] = field(default_factory=dict)
    encoder: MLP | None = None
    decoder: MLP | None = None
    codebooks: torch.Tensor | None = None
    fsq_levels: int = 0
    disambiguate: bool = False
    collision_order: str = "catalog"   # catalog | popularity: order of a bucket's items on the disambiguation level
    # training interactions per catalog row of each training domain, which orders its buckets under ``popularity``
    item_counts: dict[str, np.ndarray] = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    hash: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserError(f"unknown tokenizer kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        normalize.check_mode(self.normalization)
        if self.collision_order not in COLLISION_ORDERS:
            raise UserError(f"collision_order: {self.collision_order!r} is not one of {', '.join(COLLISION_ORDERS)}")
        for module in (self.encoder, self.decoder):
            if module is not None:
                module.eval()

    @property
    def train_domains(self) -> list[str]:
        return list(self.domain_stats)

    @property
    def code_width(self) -> int:
        """Codes per item in ``codes.parquet``: L, plus one with the disambiguation level."""
        return self.levels + int(self.disambiguate)

    # --- normalisation -------------------------------------------------------------------------------------
    def compute_stats(self, embeddings: np.ndarray) -> normalize.DomainStats | None:
        """Statistics of a domain from its whole catalog (how a domain unseen in training is handled)."""
        return normalize.compute_stats(embeddings, self.normalization)

    def stats_for(self, domain: str, embeddings: np.ndarray) -> normalize.DomainStats | None:
        """The stored statistics of a training domain, else those computed from ``embeddings`` (its catalog)."""
        if domain in self.domain_stats:
            return self.domain_stats[domain]
        return self.compute_stats(embeddings)

    def normalize(self, embeddings: np.ndarray, stats: normalize.DomainStats | None = None) -> np.ndarray:
        """Normalised float32 embeddings; ``stats=None`` computes them from ``embeddings`` as a whole catalog."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.input_dim:
            raise UserError(f"embeddings of shape {embeddings.shape} do not fit this tokenizer "
                            f"(input dim {self.input_dim}, embedder {self.embedder})")
        if stats is None and self.normalization != "none":
            stats = self.compute_stats(embeddings)
        return normalize.apply(embeddings, stats, self.normalization)

    # --- encoding and decoding -----------------------------------------------------------------------------
    def codes_from_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [N, L] of already-normalised embeddings ``x`` [N, input_dim]."""
        if self.kind == "rqkmeans":
            return residual_codes(x, self.codebooks)
        z = self.encoder(x)
        if self.kind == "clvae":
            return residual_codes(z, self.codebooks)
        return fsq_digits_to_codes(fsq_round(z, self.fsq_levels), self.fsq_levels, self.levels)

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray, domain_stats: normalize.DomainStats | None = None,
               batch_size: int = 16384) -> np.ndarray:
        """int64 codes [N, L] for one domain's embeddings [N, input_dim].

        ``domain_stats`` are that domain's normalisation statistics (:meth:`stats_for`); ``None`` computes them
        from ``embeddings``, which must then be the domain's whole catalog.
        """
        x = self.normalize(embeddings, domain_stats)
        out = [self.codes_from_normalized(torch.from_numpy(x[i:i + batch_size]))
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.levels), dtype=np.int64)

    def encode_catalog(self, embeddings: np.ndarray, domain_stats: normalize.DomainStats | None = None,
                       domain: str = "") -> np.ndarray:
        """Codes [N, code_width] of a whole catalog, with the disambiguation level when the artifact has one.

        ``domain`` names the catalog, so a training domain's buckets follow its stored interaction counts when
        the artifact orders them by popularity; any other catalog's buckets are in catalog order.
        """
        codes = self.encode(embeddings, domain_stats)
        if self.disambiguate:
            extra = disambiguation_level(codes, self.codebook_size, self.collision_priority(domain, len(codes)))
            codes = np.concatenate([codes, extra[:, None]], axis=1)
        return codes

    def collision_priority(self, domain: str, n_items: int) -> np.ndarray | None:
        """The stored training interactions per item of ``domain`` when buckets are ordered by popularity, else
        ``None`` (catalog order): a domain the tokenizer was not trained on has no training interactions."""
        if self.collision_order != "popularity" or domain not in self.item_counts:
            return None
        counts = self.item_counts[domain]
        if len(counts) != n_items:
            raise UserError(f"domain {domain!r}: the tokenizer orders its collisions by the interaction counts of "
                            f"{len(counts)} items, but the catalog has {n_items}; retrain the tokenizer on this "
                            f"catalog")
        return counts

    @torch.no_grad()
    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction [N, input_dim] in the normalised space, from codes [N, L] (extra columns ignored)."""
        c = torch.as_tensor(np.asarray(codes)[:, :self.levels], dtype=torch.long)
        if self.kind == "rqkmeans":
            return residual_vectors(self.codebooks, c).numpy()
        if self.kind == "clvae":
            return self.decoder(residual_vectors(self.codebooks, c)).numpy()
        group = fsq_group_size(self.codebook_size, self.fsq_levels)
        return self.decoder(fsq_codes_to_values(c, self.fsq_levels, group)).numpy()

    # --- persistence ---------------------------------------------------------------------------------------
    def _config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "input_dim": self.input_dim,
            "embedder": self.embedder,
            "normalization": self.normalization,
            "disambiguate": self.disambiguate,
            "collision_order": self.collision_order,
            "code_width": self.code_width,
            "encoder_dims": self.encoder.dims if self.encoder is not None else None,
            "decoder_dims": self.decoder.dims if self.decoder is not None else None,
            "fsq_levels": self.fsq_levels,
            "train_domains": {d: (s.n_items if s is not None else None) for d, s in self.domain_stats.items()},
            "training": self.training,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("encoder", self.encoder), ("decoder", self.decoder)):
            if module is not None:
                tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        if self.codebooks is not None:
            tensors["codebooks"] = self.codebooks
        for i, domain in enumerate(self.domain_stats):
            if domain in self.item_counts:
                tensors[f"counts.{i}"] = torch.from_numpy(np.asarray(self.item_counts[domain], dtype=np.float32))
        for i, stats in enumerate(self.domain_stats.values()):
            if stats is not None:
                tensors[f"stats.{i}.mean"] = torch.from_numpy(stats.mean)
                if stats.whiten is not None:
                    tensors[f"stats.{i}.whiten"] = torch.from_numpy(stats.whiten)
        return {k: v.detach().contiguous().float().cpu() for k, v in tensors.items()}

    def save(self, path: str | Path) -> str:
        """Write the artifact folder (weights first, ``config.json`` last, each atomically); returns the hash."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config, tensors = self._config(), self._tensors()
        self.hash = content_hash(config, tensors)
        with atomic_path(path / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(path / CONFIG_FILE, json.dumps({**config, "hash": self.hash}, indent=2) + "\n")
        return self.hash


def content_hash(config: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the canonical config JSON (without ``hash``) and every tensor's name, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "hash"}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().float().cpu()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load and verify an artifact folder; raises :class:`ArtifactError` naming the file at fault."""
    path = Path(path)
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ArtifactError(f"{path}: not a tokenizer artifact: {p.name} is missing")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{cfg_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    missing = [k for k in ("format_version", "kind", "levels", "codebook_size", "input_dim", "hash") if k not in config]
    if missing:
        raise ArtifactError(f"{cfg_path}: missing field(s) {', '.join(missing)}")
    if config["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{cfg_path}: format_version {config['format_version']} is not {FORMAT_VERSION}")
    try:
        tensors = load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ArtifactError(f"{w_path}: cannot read weights ({e})") from None
    actual = content_hash(config, tensors)
    if actual != config["hash"]:
        raise ArtifactError(f"{path}: content hash mismatch: {CONFIG_FILE} says {config['hash'][:16]}…, the files "
                            f"hash to {actual[:16]}… (modified, or config and weights from different artifacts)")

    def module(prefix: str, dims_key: str) -> MLP | None:
        if config.get(dims_key) is None:
            return None
        m = MLP(config[dims_key])
        m.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
        return m

    stats, counts = {}, {}
    for i, (domain, n_items) in enumerate(config.get("train_domains", {}).items()):
        if f"counts.{i}" in tensors:
            counts[domain] = tensors[f"counts.{i}"].numpy().astype(np.int64)
        mean = tensors.get(f"stats.{i}.mean")
        whiten = tensors.get(f"stats.{i}.whiten")
        stats[domain] = None if mean is None else normalize.DomainStats(
            mean=mean.numpy(), whiten=None if whiten is None else whiten.numpy(), n_items=int(n_items or 0))
    try:
        return Tokenizer(kind=config["kind"], levels=int(config["levels"]), codebook_size=int(config["codebook_size"]),
                         input_dim=int(config["input_dim"]), embedder=config.get("embedder", ""),
                         normalization=config.get("normalization", "none"), domain_stats=stats,
                         encoder=module("encoder", "encoder_dims"), decoder=module("decoder", "decoder_dims"),
                         codebooks=tensors.get("codebooks"), fsq_levels=int(config.get("fsq_levels", 0)),
                         disambiguate=bool(config.get("disambiguate", False)),
                         collision_order=config.get("collision_order", "catalog"), item_counts=counts,
                         training=config.get("training", {}), hash=config["hash"])
    except ValueError as e:
        raise ArtifactError(f"{cfg_path}: {e}") from None
