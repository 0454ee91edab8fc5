"""The evaluation job behind ``recbase evaluate`` / ``launch/evaluate.py``.

For every held-out domain: score each user's candidates with every model (fast mode: history once per user),
compute AUC / GAUC on the summed and the length-normalised log-probabilities, optionally retrieve over the full
catalog with trie-constrained beam search, score the same pairs with the baselines, and write the report.
Models are refused when their tokenizer hash differs from the one the inputs were made with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbase.config import save_config, to_dict
from recbase.data.codes import read_catalog
from recbase.data.evalsets import EvalSet, eval_set_training_domains, read_eval_set
from recbase.data.tables import INTERACTIONS_FILE, read_item_ids, user_histories
from recbase.errors import UserError
from recbase.eval import baselines as bl
from recbase.eval.calibrate import (CATALOG_SCORES, CatalogTokens, catalog_scores, empty_history_logprobs, fuse,
                                    sample_catalog)
from recbase.eval.head_score import head_scores, history_states
from recbase.eval.inputs import (check_candidates, history_items, input_tokenizer_hashes, list_eval_domains,
                                 popularity_counts)
from recbase.eval.metrics import auc, gauc, overall, retrieval_metrics
from recbase.eval.model_io import DTYPES, META_FILE, EvalModel, check_tokenizer_hash, load_eval_model
from recbase.eval.report import write_pair_scores, write_report
from recbase.eval.retrieval import Retriever
from recbase.eval.scoring import MODES, CandidateScorer
from recbase.eval.trie import CodeTrie
from recbase.tokenizer.embed import load_embeddings

USERS_PER_CALL = 256  # users handed to the scorer at once (it batches them); the progress bar moves per call


@dataclass
class EvalConfig:
    models: dict[str, str] = field(default_factory=dict)   # name -> HF export folder or DeepSpeed checkpoint
    eval_dir: str = ""                 # folder of eval/<domain>.parquet
    domains: list[str] = field(default_factory=list)        # held-out domains to evaluate; empty = all in eval_dir
    out_dir: str = "eval_out"          # where metrics.json, report.md and the charts go
    data_dir: str = ""                 # <data_dir>/<domain>/{items,interactions}.parquet, for the baselines
    embeddings_dir: str = ""           # <dir>/<domain>.npy + .json, for the text-similarity baselines
    codes: str = ""                    # codes.parquet: the catalog for retrieval (and its tokenizer hash)
    tokenizer_dir: str = ""            # tokenizer artifact folder, whose config.json hash the model must match
    baselines: list[str] = field(default_factory=lambda: list(bl.BASELINES))  # subset of random, text_raw, ...
    mode: str = "fast"                 # fast (history once per user) or naive (one forward per pair)
    batch_size: int = 256              # candidates (or beams) per forward after a cached long history
    batch_tokens: int = 8192           # fast mode: users batched per forward up to rows x longest row tokens
    device: str = "auto"               # auto = cuda when available, else cpu
    dtype: str = "auto"                # auto = bfloat16 on GPU, float32 on CPU; or float32, bfloat16, float16
    max_users: int = 0                 # users per domain to evaluate (0 = all), for quick runs
    retrieval: bool = True             # beam-search retrieval over the catalog (needs codes)
    prefix_levels: int = 1             # also report AUC of log P(first k levels) (0 = off): the coarse concepts
    beam_width: int = 20               # beams kept per level; items returned >= this
    retrieval_batch_users: int = 16    # users per retrieval forward (1 = one at a time); 8-16 fastest on CPU
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # cut-offs for Recall@K and NDCG@K
    seed: int = 0                      # for the random baseline (drawn per domain from (seed, domain))
    allow_seen_domains: bool = False   # evaluate a domain the model or tokenizer was trained on, labelled not zero-shot
    fusion_weight: float = 0.1         # weight of the standardised PMI beside the standardised text similarity
    fusion_weights: dict[str, float] = field(default_factory=dict)  # a catalog score's own weight beside the head
    catalog_users: int = 0             # eval users whose histories give the catalog PMI's mean P(item | h) (0 = off)
    pair_scores: bool = True           # write every pair's scores to <out_dir>/pairs/<domain>.parquet

    def validate(self) -> None:
        if not self.models:
            raise UserError("no model to evaluate: set models (name -> path) or pass --model NAME=PATH")
        if not self.eval_dir:
            raise UserError("eval_dir is not set")
        if self.mode not in MODES:
            raise UserError(f"mode {self.mode!r} is not one of {MODES}")
        if self.retrieval_batch_users < 1:
            raise UserError("retrieval_batch_users must be at least 1")
        if self.dtype not in DTYPES:
            raise UserError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        unknown = sorted(set(self.baselines) - set(bl.BASELINES))
        if unknown:
            raise UserError(f"unknown baseline(s) {unknown}; known: {list(bl.BASELINES)}")
        needs_data = {"text_raw", "text_centred", "popularity"} & set(self.baselines)
        if needs_data and not self.data_dir:
            raise UserError(f"baselines {sorted(needs_data)} need data_dir (items and interactions)")
        if {"text_raw", "text_centred"} & set(self.baselines) and not self.embeddings_dir:
            raise UserError("text-similarity baselines need embeddings_dir")


def ranking_metrics(eval_set: EvalSet, per_user: list[np.ndarray]) -> dict[str, float]:
    groups, scores, labels = eval_set.flat(per_user)
    return {"auc": auc(scores, labels), "gauc": gauc(groups, scores, labels),
            "gauc_pair_weighted": gauc(groups, scores, labels, weighted=True)}


def evaluate_model(em: EvalModel, eval_set: EvalSet, cfg: EvalConfig, trie: CodeTrie | None,
                   pairs: dict[str, np.ndarray]) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """The model's metrics, and its per-user scores by name (``pmi`` and, with the catalog's ``trie``, the
    :data:`~recbase.eval.calibrate.CATALOG_SCORES`) for the fusions. Every pair's per-level log-probabilities, with
    and without the history, the log of the mass on the trie's allowed codes, and the catalog scores are added to
    ``pairs``."""
    scorer = CandidateScorer(em.model, em.vocab.levels, em.vocab.bos_id, cfg.mode, cfg.batch_size,
                             cfg.batch_tokens, em.vocab.pad_id)
    allowed = CatalogTokens(trie, em.vocab) if trie is not None else None
    logps = []
    bar = tqdm(total=len(eval_set), desc=f"{em.name} / {eval_set.domain}", unit="user")
    t0 = time.perf_counter()
    for start in range(0, len(eval_set), USERS_PER_CALL):
        chunk = slice(start, start + USERS_PER_CALL)
        logps += scorer.score_users(eval_set.histories[chunk], eval_set.candidate_tokens[chunk], allowed)
        bar.update(len(eval_set.histories[chunk]))
        bar.set_postfix(pairs_per_s=f"{scorer.timing.pairs_per_s:.0f}", refresh=False)
    bar.close()
    timing = {**scorer.timing.to_dict(), "total_seconds": time.perf_counter() - t0}
    priors = empty_history_logprobs(scorer, em.vocab.bos_id, eval_set.candidate_tokens, allowed)
    catalog = {}
    if allowed is not None:
        t0 = time.perf_counter()
        sample = None   # the catalog PMI averages over users other than the scored one: it needs two or more
        if cfg.catalog_users > 0 and len(eval_set) > 1:
            sample = sample_catalog(scorer, eval_set.histories, eval_set.candidate_tokens, allowed,
                                    cfg.catalog_users, cfg.seed, eval_set.domain)
        catalog = catalog_scores(logps, priors, sample, em.vocab.levels)
        timing["catalog_prior_seconds"] = time.perf_counter() - t0
        for level in range(em.vocab.levels):
            pairs[f"{em.name}/mass_{level}"] = np.concatenate([lp[:, level, 1] for lp in logps])
            pairs[f"{em.name}/prior_mass_{level}"] = np.concatenate([p[:, level, 1] for p in priors])
        for name, per_user in catalog.items():
            pairs[f"{em.name}/{name}"] = np.concatenate(per_user)
        logps, priors = [lp[..., 0] for lp in logps], [p[..., 0] for p in priors]
    pmis = [lp - prior for lp, prior in zip(logps, priors)]
    for level in range(em.vocab.levels):
        pairs[f"{em.name}/logp_{level}"] = np.concatenate([lp[:, level] for lp in logps])
        pairs[f"{em.name}/prior_{level}"] = np.concatenate([p[:, level] for p in priors])
    result = ranking_metrics(eval_set, [lp.sum(1) for lp in logps])
    variants = {"len_norm": [lp.mean(1) for lp in logps], "pmi": [p.sum(1) for p in pmis]}
    if 0 < cfg.prefix_levels < em.vocab.levels:
        variants["prefix"] = [lp[:, :cfg.prefix_levels].sum(1) for lp in logps]
        variants["pmi_prefix"] = [p[:, :cfg.prefix_levels].sum(1) for p in pmis]
    variants.update(catalog)
    for name, per_user in variants.items():
        metrics = ranking_metrics(eval_set, per_user)
        result.update({f"auc_{name}": metrics["auc"], f"gauc_{name}": metrics["gauc"]})
    result["timing"] = timing
    if trie is not None and cfg.retrieval:
        retriever = Retriever(em.model, trie, em.vocab.n_special, em.vocab.bos_id, cfg.beam_width,
                              batch_users=cfg.retrieval_batch_users, batch_tokens=cfg.batch_tokens,
                              pad_id=em.vocab.pad_id)
        t0 = time.perf_counter()
        ranks = []
        bar = tqdm(total=len(eval_set), desc=f"retrieve {em.name} / {eval_set.domain}", unit="user")
        for start in range(0, len(eval_set), USERS_PER_CALL):
            chunk = slice(start, start + USERS_PER_CALL)
            found = retriever.retrieve_batch(eval_set.histories[chunk])
            ranks += [r.rank_of(t) for r, t in zip(found, eval_set.targets[chunk])]
            bar.update(len(found))
        bar.close()
        result["retrieval"] = retrieval_metrics(ranks, cfg.ks)
        result["retrieval"]["seconds"] = time.perf_counter() - t0
        result["retrieval"]["catalog_items"] = len(trie.item_ids)
        result["retrieval"]["catalog_tuples"] = trie.n_tuples
    return result, {"pmi": variants["pmi"], **catalog}


@dataclass
class TextInputs:
    """What the centred text similarity scored with: each user's history items and the domain's centred
    embeddings (the embedding head scores with the same)."""

    history_items: list[list[str]]
    centred: bl.TextSimilarity


def evaluate_baselines(eval_set: EvalSet, cfg: EvalConfig, levels: int, item_tokens: dict[str, np.ndarray] | None,
                       pairs: dict[str, np.ndarray]
                       ) -> tuple[dict, int | None, dict[str, list[np.ndarray]], TextInputs | None]:
    """Baseline metrics, the number of users whose history items could not be verified against the tokens
    (None when no baseline needed the history items), each baseline's per-user scores (also added to
    ``pairs``), and the centred text similarity's inputs (None without that baseline)."""
    out: dict[str, dict] = {}
    per_user: dict[str, list[np.ndarray]] = {}
    n_cands = [len(c) for c in eval_set.candidates]
    unverified = embeddings = text = None
    needs_data = {"text_raw", "text_centred", "popularity"} & set(cfg.baselines)
    if needs_data:
        domain_dir = Path(cfg.data_dir) / eval_set.domain
        sequences = user_histories(domain_dir)
        hist_items, unverified = history_items(eval_set, sequences, levels, str(domain_dir / INTERACTIONS_FILE),
                                               item_tokens)
    for name in cfg.baselines:
        if name == "random":
            scores = bl.random_scores(n_cands, cfg.seed, eval_set.domain)
        elif name == "popularity":
            scores = bl.popularity_scores(popularity_counts(sequences, eval_set), eval_set.candidates)
        else:
            if embeddings is None:
                item_ids = read_item_ids(domain_dir)
                embeddings = load_embeddings(cfg.embeddings_dir, eval_set.domain, item_ids)[0].astype(np.float32)
            sim = bl.TextSimilarity(item_ids, embeddings, centred=name == "text_centred")
            scores = [sim.score(h, c) for h, c in zip(hist_items, eval_set.candidates)]
            if name == "text_centred":
                text = TextInputs(hist_items, sim)
        out[name] = ranking_metrics(eval_set, scores)
        per_user[name] = scores
        pairs[name] = np.concatenate(scores)
    return out, unverified, per_user, text


def evaluate_head(em: EvalModel, eval_set: EvalSet, cfg: EvalConfig, text: TextInputs,
                  model_scores: dict[str, list[np.ndarray]], pairs: dict[str, np.ndarray]) -> dict:
    """Metrics of the model's next-item embedding head (:mod:`recbase.eval.head_score`): its cosine alone
    (``head``), fused with the model's PMI as the text similarity is in *PMI + text* (``head_fused``), and fused
    the same way with each catalog score (``<score>_head``, at the score's own weight in ``fusion_weights``). The
    head's scores are added to ``pairs``."""
    hidden = history_states(em.model, eval_set.histories, em.vocab.levels, em.vocab.bos_id, em.vocab.pad_id,
                            cfg.batch_tokens)
    scores = head_scores(em.embedding_head, hidden, text.centred, text.history_items, eval_set.candidates)
    pairs[f"{em.name}/head"] = np.concatenate(scores)
    fused = {"head": scores, "head_fused": fuse(scores, model_scores["pmi"], cfg.fusion_weight)}
    fused.update({f"{name}_head": fuse(scores, model_scores[name], cfg.fusion_weights.get(name, cfg.fusion_weight))
                  for name in CATALOG_SCORES if name in model_scores})
    result = {}
    for name, per_user in fused.items():
        metrics = ranking_metrics(eval_set, per_user)
        result.update({f"auc_{name}": metrics["auc"], f"gauc_{name}": metrics["gauc"]})
    return result


def _overall(domains: dict, kind: str) -> dict:
    names = next(iter(domains.values()))[kind]
    result = {}
    for name in names:
        metrics = {}
        for key, value in next(iter(domains.values()))[kind][name].items():
            if isinstance(value, float):
                metrics[key] = overall(d[kind][name][key] for d in domains.values())
        retrieval = [d[kind][name]["retrieval"] for d in domains.values() if "retrieval" in d[kind][name]]
        if retrieval:
            metrics["retrieval"] = {k: overall(r[k] for r in retrieval) for k in retrieval[0]
                                    if k.startswith(("recall", "ndcg", "mrr"))}
        result[name] = metrics
    return result


def training_exposure(domain: str, eval_path: Path, models: dict[str, EvalModel]) -> tuple[list[str], list[str]]:
    """``(reasons, fine_tuned)``: why ``domain`` is not zero-shot (the tokenizer or a pretrained model was trained
    on it, as the eval set's metadata and the models' ``recbase.json`` record it), and the models fine-tuned on it,
    which is the point of fine-tuning and is labelled, never refused."""
    tokenizer_domains = eval_set_training_domains(eval_path)[0]
    reasons, fine_tuned = [], []
    if domain in (tokenizer_domains or []):
        reasons.append(f"the tokenizer was trained on it ({eval_path} metadata)")
    for name, em in models.items():
        if domain in (em.tokenizer_train_domains or []) and not tokenizer_domains:
            reasons.append(f"model {name!r}'s tokenizer was trained on it ({em.path / META_FILE})")
        if domain in (em.train_domains or []):
            if em.fine_tuned:
                fine_tuned.append(name)
            else:
                reasons.append(f"model {name!r} was pretrained on it ({em.path / META_FILE})")
    return reasons, fine_tuned


def evaluate(cfg: EvalConfig) -> dict:
    """Run the whole evaluation and write the report under ``cfg.out_dir``; returns the results dict."""
    cfg.validate()
    domains = cfg.domains or list_eval_domains(cfg.eval_dir)
    eval_paths = [Path(cfg.eval_dir) / f"{d}.parquet" for d in domains]
    for p in eval_paths:
        if not p.exists():
            raise UserError(f"eval set {p} not found")
    expected = input_tokenizer_hashes(eval_paths, cfg.codes, cfg.tokenizer_dir)
    if not expected:
        print("warning: no input states a tokenizer hash (no manifest.json beside eval/, no codes or tokenizer_dir "
              "given); the models' tokenizers cannot be checked")
    models = {}
    for name, path in cfg.models.items():
        em = load_eval_model(name, path, cfg.device, cfg.dtype, cfg.tokenizer_dir or None)
        check_tokenizer_hash(em, expected)
        models[name] = em
    seen = {d: training_exposure(d, p, models) for d, p in zip(domains, eval_paths)}
    for domain, (reasons, _) in seen.items():
        if reasons and not cfg.allow_seen_domains:
            raise UserError(f"domain {domain!r} is not zero-shot: {'; '.join(reasons)}. Evaluate a domain left out "
                            f"of training, or set allow_seen_domains=true to report it labelled not zero-shot")
    vocabs = {em.vocab for em in models.values()}
    if len(vocabs) != 1:
        raise UserError(f"models disagree on the vocabulary layout: {[em.vocab for em in models.values()]}")
    vocab = vocabs.pop()
    device = next(next(iter(models.values())).model.parameters()).device
    results: dict = {"config": to_dict(cfg), "models": {n: str(m.path) for n, m in models.items()},
                     "tokenizer_hashes": expected, "device": str(device),
                     "model_train_domains": {n: m.train_domains for n, m in models.items()},
                     "tokenizer_train_domains": {n: m.tokenizer_train_domains for n, m in models.items()},
                     "domains": {}}
    if cfg.retrieval and not cfg.codes:
        print("retrieval skipped: no codes.parquet given (set codes=PATH)")
    for domain, path in zip(domains, eval_paths):
        eval_set = read_eval_set(path, vocab, cfg.max_users)
        trie, item_tokens = None, None
        if cfg.codes:
            item_ids, codes = read_catalog(cfg.codes, domain, vocab)
            item_tokens = dict(zip(item_ids, vocab.encode_codes(codes)))
            check_candidates(eval_set, item_tokens, cfg.codes)
            trie = CodeTrie.build(codes, item_ids, vocab.codebook_size, device)
        reasons, fine_tuned = seen[domain]
        groups, _, labels = eval_set.flat([np.zeros(len(c)) for c in eval_set.candidates])
        pairs = {"user_id": np.asarray(eval_set.user_ids, dtype=object)[groups],
                 "candidate": np.concatenate([np.asarray(c, dtype=object) for c in eval_set.candidates]),
                 "label": labels}
        section = {"users": len(eval_set), "pairs": eval_set.n_pairs, "zero_shot": not reasons,
                   "not_zero_shot_because": reasons, "fine_tuned_on_it": fine_tuned, "models": {}}
        model_scores = {}
        for name, em in models.items():
            section["models"][name], model_scores[name] = evaluate_model(em, eval_set, cfg, trie, pairs)
        section["baselines"], section["history_items_unverified"], baseline_scores, text = evaluate_baselines(
            eval_set, cfg, vocab.levels, item_tokens, pairs)
        if text is not None:
            for name, scores in model_scores.items():
                fused = ranking_metrics(eval_set, fuse(baseline_scores["text_centred"], scores["pmi"],
                                                       cfg.fusion_weight))
                section["models"][name].update({"auc_fused": fused["auc"], "gauc_fused": fused["gauc"]})
                if models[name].embedding_head is not None:
                    section["models"][name].update(evaluate_head(models[name], eval_set, cfg, text, scores, pairs))
        if cfg.pair_scores:
            write_pair_scores(pairs, Path(cfg.out_dir) / "pairs" / f"{domain}.parquet")
        results["domains"][domain] = section
        print(f"[{domain}] " + ", ".join(f"{n} AUC {r['auc']:.4f}" for n, r in
                                          {**section["models"], **section["baselines"]}.items()))
    results["overall"] = {"models": _overall(results["domains"], "models"),
                          "baselines": _overall(results["domains"], "baselines")}
    write_report(results, cfg.out_dir)
    save_config(cfg, Path(cfg.out_dir) / "config.json")
    return results
