"""The attention head's recency biases fitted listwise on the pretraining domains' real text embeddings.

Why: on a catalog the model never saw, what the next-item embedding head transfers is its recency profile (its
hidden-state query adds nothing there, docs/evaluation.md), and that profile's gain comes from these 16 biases. The
head learns them by a cosine regression toward the tokenizer's reconstruction of the next item, beside the token
loss, and moves them little; the same 16 biases fitted on the task the evaluation asks — the next item against
negatives drawn uniformly from the same domain's interacted items, softmax over the slate, on the real centred
embeddings — transfer about three times as much to held-out domains. ``recbase head-recency`` writes them to a
small JSON file and pretraining with ``model.embedding_head_recency`` starts the head's biases there and keeps them
fixed, so the head trains only its query.

Each domain counts alike in the fit (a batch of slates from every domain per step), as each would on a new one.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recbase.data.evalsets import sample_uniform_negatives
from recbase.data.tables import read_item_ids, user_histories
from recbase.errors import UserError
from recbase.io import atomic_write_text
from recbase.tokenizer.embed import load_embeddings, unit_rows
from recbase.train.embedding_head import HISTORY_WINDOW, RECENCY_BUCKETS

NEGATIVES = 10     # per next item, as the eval sets' default
STEPS = 400        # optimizer steps of the fit, each a batch of every domain
FORMAT = "recbase.head_recency/1"


class Slates:
    """One domain's slates as rows of its centred unit vectors ``vectors [I, D]``: per example the history's rows
    ``history [N, HISTORY_WINDOW]`` (latest first, -1 = none) and the candidates' ``candidates [N, C]`` (the next item
    first). Rows, not vectors, so that a domain of many users costs megabytes, not gigabytes."""

    def __init__(self, vectors: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor):
        self.vectors, self.history, self.candidates = vectors, history, candidates

    def __len__(self) -> int:
        return len(self.history)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Histories ``[B, HISTORY_WINDOW, D]`` (zeros where none), their mask and candidates ``[B, C, D]``."""
        history = self.history[rows]
        return self.vectors[history.clamp_min(0)], history >= 0, self.vectors[self.candidates[rows]]


def centred_embeddings(data_dir: str | Path, embeddings_dir: str | Path, domain: str) -> tuple[list[str], np.ndarray]:
    """A domain's item ids and their text embeddings centred on the catalog's mean and unit, as the text bar's."""
    items = read_item_ids(Path(data_dir) / domain)
    emb = load_embeddings(embeddings_dir, domain, items)[0].astype(np.float32)
    return items, unit_rows(emb - emb.mean(0))


def domain_slates(data_dir: str | Path, embeddings_dir: str | Path, domain: str, seed: int,
                  negatives: int = NEGATIVES) -> Slates:
    """Every position of every user of ``domain`` with at least 3 items: its history and the next item among
    ``negatives`` drawn uniformly from the domain's interacted items (not the user's). Vectors are centred on the
    domain's catalog mean and unit, as the text bar's."""
    items, emb = centred_embeddings(data_dir, embeddings_dir, domain)
    row = {item: i for i, item in enumerate(items)}
    users = [np.array([row[i] for i in seq]) for seq in user_histories(Path(data_dir) / domain).values()
             if len(seq) >= 3]
    if not users:
        raise UserError(f"{Path(data_dir) / domain}: no user with 3 items or more to fit the recency on")
    pool = np.unique(np.concatenate(users))
    rng = np.random.default_rng(seed)
    histories, candidates = [], []
    for seq in users:
        for t in range(2, len(seq)):
            drawn = sample_uniform_negatives(rng, pool, seq, negatives)
            if len(drawn) == negatives:
                h = np.full(HISTORY_WINDOW, -1)
                recent = seq[max(0, t - HISTORY_WINDOW):t][::-1]
                h[:len(recent)] = recent
                histories.append(h)
                candidates.append(np.r_[seq[t], drawn])
    return Slates(torch.from_numpy(emb), torch.from_numpy(np.stack(histories)), torch.from_numpy(np.stack(candidates)))


def recency_profile(biases: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N, D]``: the unit mean of each history's vectors under softmax(``biases`` of each item's distance from the
    latest), what :class:`~recbase.train.embedding_head.EmbeddingHead` predicts with a zero query (``history``
    latest first)."""
    distance = torch.arange(history.shape[1]).clamp(max=RECENCY_BUCKETS - 1)
    logits = biases[distance].expand(mask.shape).masked_fill(~mask, float("-inf"))
    return F.normalize((torch.softmax(logits, -1)[..., None] * history).sum(1), dim=-1)


def recency_scores(biases: torch.Tensor, history: torch.Tensor, mask: torch.Tensor,
                   candidates: torch.Tensor) -> torch.Tensor:
    """``[N, C]``: each candidate's cosine with :func:`recency_profile`."""
    return (candidates * recency_profile(biases, history, mask)[:, None]).sum(-1)


def fit_listwise(slates: list[Slates], score, params: list[torch.Tensor], seed: int, steps: int = STEPS,
                 batch: int = 512, lr: float = 0.05, penalty=None) -> float:
    """Fit ``params`` (and a softmax scale, returned) so that ``score(history, mask, candidates)`` ``[B, C]`` picks
    the next item out of each slate, every domain's slates (:func:`domain_slates` of each) weighing alike;
    ``penalty()``, when given, is added to the loss."""
    torch.manual_seed(seed)
    log_scale = torch.tensor(float(np.log(5.0)), requires_grad=True)
    opt = torch.optim.Adam([*params, log_scale], lr)
    target = torch.zeros(batch, dtype=torch.long)
    for _ in range(steps):
        loss = 0.0 if penalty is None else penalty()
        for domain in slates:
            history, mask, candidates = domain.batch(torch.randint(len(domain), (batch,)))
            loss = loss + F.cross_entropy(log_scale.exp() * score(history, mask, candidates), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(log_scale.detach().exp())


def fit_recency(slates: list[Slates], seed: int, steps: int = STEPS,
                batch: int = 512, lr: float = 0.05) -> tuple[np.ndarray, float]:
    """The biases (and the softmax scale) that best pick the next item out of each slate (:func:`fit_listwise`)."""
    biases = torch.zeros(RECENCY_BUCKETS, requires_grad=True)
    scale = fit_listwise(slates, lambda h, m, c: recency_scores(biases, h, m, c), [biases], seed, steps, batch, lr)
    return biases.detach().numpy().astype(np.float32), scale


def fit_domains(data_dir: str | Path, embeddings_dir: str | Path, domains: list[str], path: str | Path, seed: int,
                steps: int = STEPS) -> str:
    """Fit the biases on ``domains`` (:func:`domain_slates` of each, :func:`fit_recency`) and write them to ``path``
    with what they were fitted on; returns a line for the log. ``recbase head-recency`` and the pipeline runner
    both run this."""
    t0 = time.perf_counter()
    slates = [domain_slates(data_dir, embeddings_dir, d, seed) for d in domains]
    biases, scale = fit_recency(slates, seed, steps)
    write_recency(path, biases, {"domains": list(domains), "slates": [len(s) for s in slates], "seed": seed,
                                 "steps": steps, "scale": round(scale, 4)})
    return (f"recency biases (latest first) {[round(float(b), 2) for b in biases]}, fitted on "
            f"{sum(len(s) for s in slates):,} slates of {len(domains)} domains in {time.perf_counter() - t0:.0f} s; "
            f"wrote {path}")


def _digest(biases: list[float]) -> str:
    return hashlib.sha256(json.dumps(biases).encode("ascii")).hexdigest()


def write_recency(path: str | Path, biases: np.ndarray, info: dict) -> None:
    """The biases with what they were fitted on (``info``) and their SHA-256, atomically."""
    values = [round(float(b), 6) for b in biases]
    atomic_write_text(Path(path), json.dumps({"format": FORMAT, "biases": values, "sha256": _digest(values),
                                              **info}, indent=1) + "\n")


def fix_recency(head: torch.nn.Module, path: str | Path) -> None:
    """Give an attention head (:class:`~recbase.train.embedding_head.EmbeddingHead`) the biases of ``path`` and keep
    them there: they leave the optimizer's parameters (``recbase.train.optim.param_groups`` skips frozen ones)."""
    with torch.no_grad():
        head.recency.copy_(read_recency(path))
    head.recency.requires_grad_(False)


def read_recency(path: str | Path) -> torch.Tensor:
    """The biases of a :func:`write_recency` file, after checking its format, length and hash."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable recency file ({e})") from e
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UserError(f"{path}: field 'format' is not {FORMAT!r}; write it with `recbase head-recency`")
    biases = saved.get("biases")
    if not isinstance(biases, list) or len(biases) != RECENCY_BUCKETS:
        raise UserError(f"{path}: field 'biases' must list {RECENCY_BUCKETS} numbers")
    if saved.get("sha256") != _digest(biases):
        raise UserError(f"{path}: field 'sha256' does not match the biases (the file was changed); fit it again")
    return torch.tensor(biases, dtype=torch.float32)
