"""How far above the centred text bar can any ranker get that sees only text geometry, learned on other domains?

    python launch/bench/zeroshot_text_ceiling.py --data runs/zs/data --embeddings runs/zs/embeddings \
        --train movielens,amazon-books,amazon-electronics --heldout scientific,amazon-health,recipes \
        --pairs runs/zs/exp/s_a_s0/eval200/pairs

Why: the zero-shot model's transferable part is a re-weighting of the history's text vectors (docs/evaluation.md,
"The next-item embedding head"). This measures the ceiling of that family directly, without a language model: a
small network over domain-agnostic features of (history, candidate) — the candidate's centred cosine with each of
the 10 latest items, with the history mean, recency-weighted means and soft maxima, and the history's length — is
fitted listwise on every position of the training domains' users (the next item against 10 negatives drawn
uniformly from the domain's interacted items, as :mod:`recbase.train.head_recency` draws them) and scores the
held-out domains' eval sets (``--pairs``: their users and candidates, from a ``recbase evaluate`` run's pair
scores). ``--profiles-only`` keeps the cosines with the history's mean and recency-weighted means, ``--linear``
drops the hidden layer, ``--recency`` fits the embedding head's own form instead (one bias per distance from
the latest item), ``--metric RANK`` that form plus a learned low-rank metric on the text space (whether any
direction of it matters alike across domains), and ``--density K`` that form plus a learned weight on how crowded
the catalog's text space is around the candidate (its mean cosine with its K nearest catalog items, standardised
per catalog: a candidate-only prior every catalog has without any interaction). ``--catalog`` adds the bar as a
posterior over each held-out domain's whole catalog, the calibration a served model could do without seeing the
slate. Nothing of a held-out domain is learned. Printed per held-out domain, mean ± half the range over the seeds of
the fit: the bar's AUC and GAUC, the ranker's gaps to them, and both as per-user slate posteriors
(:func:`recbase.eval.calibrate.slate_posterior`, the softmax sharpness fitted on the training domains).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recbase.data.tables import read_table, user_histories
from recbase.eval.calibrate import slate_posterior
from recbase.eval.metrics import auc, gauc
from recbase.eval.report import BAR
from recbase.tokenizer.embed import unit_rows
from recbase.train.embedding_head import HISTORY_WINDOW, RECENCY_BUCKETS
from recbase.train.head_recency import (Slates, centred_embeddings, domain_slates, fit_listwise, fit_recency,
                                        recency_profile, recency_scores)

LATEST = 10          # per-item cosines of the latest items
DECAYS = (0.5, 0.8, 0.9)
SOFT_MAX = (0.05, 0.1)
PROFILES = slice(2 * LATEST, 2 * LATEST + 1 + len(DECAYS))   # feature columns: cosines with the mean and the
                                                              # recency-weighted means


def training_slates(data: str, embeddings: str, domain: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every position of every user of a training domain (:func:`recbase.train.head_recency.domain_slates`, seed 0)
    as (the history's vectors, latest first; the candidates', the next item first)."""
    slates = domain_slates(data, embeddings, domain, 0)
    vectors = slates.vectors.numpy()
    return [(vectors[h[h >= 0]], vectors[c]) for h, c in zip(slates.history.numpy(), slates.candidates.numpy())]


def heldout_slates(data: str, embeddings: str, domain: str, pairs: str):
    """A held-out domain's eval set (``pairs``: a folder of ``recbase evaluate``'s pair scores) as slates, the
    bar's own scores ``[N, C]`` from there, and the domain's whole catalog of centred unit vectors."""
    items, emb = centred_embeddings(data, embeddings, domain)
    row = {item: i for i, item in enumerate(items)}
    return *eval_set_slates(f"{pairs}/{domain}.parquet", user_histories(f"{data}/{domain}"), emb, row), emb


def eval_set_slates(path: str, histories: dict[str, list[str]], emb: np.ndarray, row: dict[str, int]):
    """The users of an eval set (its pair scores' file), each with its history (every item before its last, as
    the eval-set builder holds out the last) and its candidates, the positive first; and the bar's scores."""
    table = read_table(path, ["user_id", "candidate", "label", BAR])
    users = table["user_id"].to_numpy(zero_copy_only=False)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    slates, bars = [], []
    for user, cands, labels, bar in zip(np.split(users, cuts), *(np.split(table[c].to_numpy(zero_copy_only=False), cuts)
                                                                for c in ("candidate", "label", BAR))):
        order = np.argsort(-labels, kind="stable")   # the one positive first
        seq = histories[user[0]]
        if seq[-1] != cands[order[0]]:
            raise SystemExit(f"{path}: user {user[0]}'s positive is not their last item")
        history = np.array([row[i] for i in seq[:-1][-HISTORY_WINDOW:]])
        slates.append((emb[history][::-1], emb[[row[c] for c in cands[order]]]))
        bars.append(bar[order].astype(np.float64))
    return slates, np.stack(bars)


def feature_tensor(slates) -> torch.Tensor:
    """``[N, C, F]`` :func:`features` of every slate."""
    return torch.tensor(np.stack([features(h, c) for h, c in slates]), dtype=torch.float32)


def features(history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``[C, F]``: what any catalog has — cosines with the latest items (and which exist), with the mean, with
    recency-weighted means, soft maxima over the history, the history's length. ``history`` is latest first."""
    sims = candidates @ history.T
    n = sims.shape[1]
    latest, present = np.zeros((len(candidates), LATEST)), np.zeros((len(candidates), LATEST))
    latest[:, :min(n, LATEST)], present[:, :min(n, LATEST)] = sims[:, :LATEST], 1
    unit = lambda v: v / (np.linalg.norm(v) + 1e-9)  # noqa: E731
    cols = [latest, present, (candidates @ unit(history.mean(0)))[:, None]]
    cols += [(candidates @ unit(d ** np.arange(n) @ history))[:, None] for d in DECAYS]
    cols += [tau * np.log(np.exp(sims / tau).mean(1))[:, None] for tau in SOFT_MAX]
    cols += [sims.max(1)[:, None], np.full((len(candidates), 1), np.log(n))]
    return np.concatenate(cols, 1)


def fit_ranker(x: torch.Tensor, seed: int, linear: bool, steps: int = 600):
    """A 32-unit MLP (or a linear map) over the standardised features, trained by softmax over each example's
    candidates."""
    torch.manual_seed(seed)
    flat = x.reshape(-1, x.shape[-1])
    mu, sd = flat.mean(0), flat.std(0) + 1e-6
    net = (torch.nn.Linear(x.shape[-1], 1) if linear else
           torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 32), torch.nn.GELU(), torch.nn.Linear(32, 1)))
    opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-4)
    target = torch.zeros(512, dtype=torch.long)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (512,))]
        loss = torch.nn.functional.cross_entropy(net((batch - mu) / sd).squeeze(-1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda z: net((z - mu) / sd).squeeze(-1).detach().double().numpy()  # noqa: E731


def padded(slates) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histories ``[N, HISTORY_WINDOW, D]`` with their mask, and candidates ``[N, C, D]``."""
    dim = slates[0][1].shape[1]
    history = np.zeros((len(slates), HISTORY_WINDOW, dim), np.float32)
    mask = np.zeros((len(slates), HISTORY_WINDOW), bool)
    for i, (h, _) in enumerate(slates):
        history[i, :len(h)], mask[i, :len(h)] = h, True
    return torch.tensor(history), torch.tensor(mask), torch.tensor(np.stack([c for _, c in slates]))


def fit_recency_ranker(data: str, embeddings: str, domains: list[str], seed: int):
    """The head's recency biases fitted listwise on ``domains`` (:mod:`recbase.train.head_recency`), as a ranker of
    slates."""
    biases, _ = fit_recency([domain_slates(data, embeddings, d, 0) for d in domains], seed)
    print(f"recency biases (latest first): {np.round(biases, 2).tolist()}")
    return lambda held: recency_scores(torch.from_numpy(biases), *padded(held)).double().numpy()  # noqa: E731


def fit_metric_ranker(data: str, embeddings: str, domains: list[str], seed: int, rank: int, decay: float):
    """The head's recency form plus a learned metric on the text space, fitted listwise on ``domains``: a
    candidate's cosine with the recency profile ``p`` plus ``(U p) . (U c)``, ``U`` of ``rank`` rows, with an L2
    penalty ``decay`` on ``U``: whether any direction of the text space matters alike in every domain."""
    slates = [domain_slates(data, embeddings, d, 0) for d in domains]
    torch.manual_seed(seed)
    biases = torch.zeros(RECENCY_BUCKETS, requires_grad=True)
    metric = (0.01 * torch.randn(rank, slates[0].vectors.shape[1])).requires_grad_()

    def score(history, mask, candidates):
        profile = recency_profile(biases, history, mask)
        learned = ((profile @ metric.T)[:, None] * (candidates @ metric.T)).sum(-1)
        return (candidates * profile[:, None]).sum(-1) + learned

    fit_listwise(slates, score, [biases, metric], seed, lr=0.01, penalty=lambda: decay * (metric ** 2).sum())

    @torch.no_grad()
    def ranker(held):
        return score(*padded(held)).double().numpy()
    return ranker


def catalog_density(catalog: np.ndarray, k: int) -> np.ndarray:
    """``[I]``: each item's mean cosine with its ``k`` nearest other items of ``catalog``, standardised over it."""
    sims = catalog @ catalog.T
    np.fill_diagonal(sims, -np.inf)
    crowd = np.partition(sims, -k, axis=1)[:, -k:].mean(1)
    return ((crowd - crowd.mean()) / (crowd.std() + 1e-9)).astype(np.float32)


def fit_density_ranker(data: str, embeddings: str, domains: list[str], catalogs: list[np.ndarray], seed: int, k: int):
    """The head's recency form plus ``w`` × the candidate's :func:`catalog_density`, fitted listwise on ``domains``.
    Every catalog vector (of ``domains`` and of ``catalogs``, the held-out domains') carries its density as one more
    column, looked up by the vector itself, so the fit and the held-out slates are scored by one function."""
    slates = [domain_slates(data, embeddings, d, 0) for d in domains]
    density = {}
    for catalog in [s.vectors.numpy() for s in slates] + catalogs:
        density.update(zip(map(bytes, catalog), catalog_density(catalog, k)))
    biases, weight = torch.zeros(RECENCY_BUCKETS, requires_grad=True), torch.zeros(1, requires_grad=True)

    def with_density(vectors: np.ndarray) -> np.ndarray:
        return np.c_[vectors, [density[bytes(v)] for v in vectors]].astype(np.float32)

    def score(history, mask, candidates):
        return recency_scores(biases, history[..., :-1], mask, candidates[..., :-1]) + weight * candidates[..., -1]

    fit_listwise([Slates(torch.from_numpy(with_density(s.vectors.numpy())), s.history, s.candidates) for s in slates],
                 score, [biases, weight], seed)
    print(f"density weight {float(weight.detach()):+.3f}, recency biases (latest first) "
          f"{[round(float(b), 2) for b in biases.detach()]}")

    @torch.no_grad()
    def ranker(held):
        return score(*padded([(with_density(h), with_density(c)) for h, c in held])).double().numpy()
    return ranker


def catalog_posterior_gain(slates, bar: np.ndarray, catalog: np.ndarray) -> tuple[float, float]:
    """The bar as a posterior over the domain's whole catalog, softmax(β × cosine) normalised over every catalog
    item's cosine with the user's profile, not over the slate: (β, its pooled AUC − the bar's) at the best β of a
    grid chosen on these users themselves, an upper bound of what calibrating without the slate gives."""
    cosines = bar_profiles(slates) @ catalog.T
    labels = np.zeros(bar.shape)
    labels[:, 0] = 1
    plain = auc(bar.ravel(), labels.ravel())
    gains = {}
    for beta in (1, 2, 5, 10, 20, 40):
        top = (beta * cosines).max(1, keepdims=True)
        log_z = top + np.log(np.exp(beta * cosines - top).sum(1, keepdims=True))
        gains[beta] = auc((beta * bar - log_z).ravel(), labels.ravel()) - plain
    best = max(gains, key=gains.get)
    return best, gains[best]


def bar_profiles(slates) -> np.ndarray:
    """``[N, D]``: the bar's profile of each slate, its history's unit mean."""
    return unit_rows(np.stack([h.mean(0) for h, _ in slates]))


def bar_scores(slates) -> np.ndarray:
    """``[N, C]``: the bar, each candidate's cosine with the history's mean."""
    return np.stack([c @ p for (_, c), p in zip(slates, bar_profiles(slates))]).astype(np.float64)


def fit_beta(scores: np.ndarray) -> float:
    """The softmax sharpness that best predicts the positive (column 0) on the training examples."""
    grid = [1, 2, 3, 5, 8, 12, 20, 30, 50]
    return max(grid, key=lambda b: np.mean([np.log(slate_posterior(s, b)[0]) for s in scores]))


def measures(scores: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Pooled AUC, GAUC and the pooled AUC of the slate posteriors of ``[N, C]`` scores (positive first)."""
    labels = np.zeros(scores.shape)
    labels[:, 0] = 1
    groups = np.repeat(np.arange(len(scores)), scores.shape[1])
    posterior = np.stack([slate_posterior(s, beta) for s in scores])
    return auc(scores.ravel(), labels.ravel()), gauc(groups, scores.ravel(), labels.ravel()), \
        auc(posterior.ravel(), labels.ravel())


def _profiles(x: torch.Tensor) -> torch.Tensor:
    """The features with every column but the profile cosines zeroed (constant, so the ranker cannot use them)."""
    out = torch.zeros_like(x)
    out[..., PROFILES] = x[..., PROFILES]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="tables folder holding every domain named below")
    parser.add_argument("--embeddings", required=True, help="text embeddings of those domains (recbase embed)")
    parser.add_argument("--train", required=True, help="domains to fit on, comma-separated")
    parser.add_argument("--heldout", required=True, help="domains to score, comma-separated")
    parser.add_argument("--seeds", default="0,1", help="seeds of the network (the examples use seed 0)")
    parser.add_argument("--pairs", required=True, help="the held-out domains' eval sets to score: the folder of a "
                        "`recbase evaluate` run's pair scores (<out_dir>/pairs); the bar is its own column there")
    parser.add_argument("--profiles-only", action="store_true", help="only the cosines with the history's mean and "
                        "recency-weighted means: what a re-weighting of the history (the embedding head) can use")
    parser.add_argument("--linear", action="store_true", help="a linear map instead of the MLP: with --profiles-only, "
                        "within a user one direction in the text space, a weighted mix of the history's profiles")
    parser.add_argument("--recency", action="store_true", help="instead of the features, the embedding head's "
                        "transferable form alone: one learned bias per distance from the latest item, fitted listwise")
    parser.add_argument("--metric", type=int, default=0, metavar="RANK", help="instead of the features, the head's "
                        "recency form plus a learned metric of this rank on the text space, fitted listwise")
    parser.add_argument("--metric-decay", type=float, default=0.01, help="L2 penalty on the metric (--metric)")
    parser.add_argument("--density", type=int, default=0, metavar="K", help="instead of the features, the head's "
                        "recency form plus a learned weight on the candidate's mean cosine with its K nearest catalog "
                        "items, fitted listwise")
    parser.add_argument("--catalog", action="store_true", help="also the bar as a posterior over each held-out "
                        "domain's whole catalog instead of the slate, at its best β (an upper bound)")
    args = parser.parse_args()
    t0 = time.time()
    train = [s for d in args.train.split(",") for s in training_slates(args.data, args.embeddings, d)]
    heldout = {d: heldout_slates(args.data, args.embeddings, d, args.pairs) for d in args.heldout.split(",")}
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.recency:
        rankers = [fit_recency_ranker(args.data, args.embeddings, args.train.split(","), s) for s in seeds]
    elif args.density:
        catalogs = [catalog for _, _, catalog in heldout.values()]
        rankers = [fit_density_ranker(args.data, args.embeddings, args.train.split(","), catalogs, s, args.density)
                   for s in seeds]
    elif args.metric:
        rankers = [fit_metric_ranker(args.data, args.embeddings, args.train.split(","), s, args.metric,
                                     args.metric_decay) for s in seeds]
    else:
        select = _profiles if args.profiles_only else (lambda x: x)
        train_x = select(feature_tensor(train))
        nets = [fit_ranker(train_x, s, args.linear) for s in seeds]
        rankers = [lambda held, net=net: net(select(feature_tensor(held))) for net in nets]
    bar_beta = fit_beta(bar_scores(train))
    ranker_betas = [fit_beta(r(train)) for r in rankers]
    print(f"{len(train):,} training examples from {args.train}; bar beta {bar_beta}, ranker beta {ranker_betas}")
    print("| domain | users | bar AUC | bar GAUC | ranker − bar, AUC | ranker − bar, GAUC | bar posterior − bar | "
          "ranker posterior − bar |\n|---|---|---|---|---|---|---|---|")
    cell = lambda v: f"{np.mean(v):+.4f} ± {(max(v) - min(v)) / 2:.4f}"  # noqa: E731
    rows = []
    for domain, (slates, bar, _) in heldout.items():
        bar = measures(bar, bar_beta)
        ranker = [measures(r(slates), b) for r, b in zip(rankers, ranker_betas)]
        gaps = [[m[i] - bar[i if i < 2 else 0] for m in ranker] for i in range(3)]
        rows.append((bar, gaps))
        print(f"| {domain} | {len(slates)} | {bar[0]:.4f} | {bar[1]:.4f} | {cell(gaps[0])} | {cell(gaps[1])} | "
              f"{bar[2] - bar[0]:+.4f} | {cell(gaps[2])} |")
    mean = lambda i: [float(np.mean([g[i][s] for _, g in rows])) for s in range(len(rankers))]  # noqa: E731
    print(f"| **Overall** | | {np.mean([b[0] for b, _ in rows]):.4f} | {np.mean([b[1] for b, _ in rows]):.4f} | "
          f"{cell(mean(0))} | {cell(mean(1))} | {np.mean([b[2] - b[0] for b, _ in rows]):+.4f} | {cell(mean(2))} |")
    if args.catalog:
        print("\n| domain | bar as a catalog posterior − bar | its β |\n|---|---|---|")
        gains = {d: catalog_posterior_gain(slates, bar, catalog) for d, (slates, bar, catalog) in heldout.items()}
        for domain, (beta, gain) in gains.items():
            print(f"| {domain} | {gain:+.4f} | {beta} |")
        print(f"| **Overall** | {np.mean([g for _, g in gains.values()]):+.4f} | |")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
