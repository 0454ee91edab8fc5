"""The in-domain benchmark: TIGER's table on a P5-format split (Amazon Beauty by default), from one command.

P5 folder → items and interactions tables → MiniLM text embeddings → item tokenizer trained on the domain, with
a collision level so every item has its own code tuple → shards (each user's last two items held out) → one
Qwen2 per seed trained with DeepSpeed, a checkpoint every ``checkpoint_every`` steps → every checkpoint ranked
on the validation targets, the best one (by NDCG@10) evaluated once on the test targets → the table, with the
baselines of the same run and the published numbers, in ``<out>/<run_name>/report.md`` and ``metrics.json``.

The protocol is :mod:`recbase.eval.leave_one_out`. Every stage writes under ``<out>/`` and is skipped when its
output exists, so an interrupted run continues where it stopped; a seed's results (``leave_one_out.json`` beside
its checkpoints) are reused when the protocol settings are the same, so adding a seed ranks only the new model.
With ``fusion``, the selected checkpoint's beam is also fused with text similarity (:mod:`recbase.eval.fusion`):
its text profile, scale and weight are chosen on the same validation targets, and the test targets are ranked once
with that choice; the report leads with the fused row and keeps the generative-only one.
With ``ensemble`` (two seeds or more), the seeds' selected checkpoints also rank together: the union of their
beams and the text top, each candidate scored by the mean of the models' log P, fused with text as one model's,
its setting chosen on the same validation targets (``ensemble.json`` beside the report); the per-seed rows stay.
Each seed's fusion pass saves its checkpoint's beam of the split beside the seed's checkpoints, and the ensemble
(or a rerun of that pass) reads it back instead of searching it again (:mod:`recbase.eval.beam_store`).
Levers are compared with ``test=false``, which stops after the validation ranking; the chosen setting run again
with ``test=true`` ranks only the test targets, with the checkpoint selected before.
A model change (``train_overrides``) needs a new ``run_name`` (runs of one ``out`` share its data, tokenizer and
shards); a tokenizer change needs a new ``out``, and a folder holding another tokenizer is refused.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from recbase.config import AT_LEAST_0, AT_LEAST_1, ConfigError, Range, check_ranges, save_config, to_dict
from recbase.pipeline import run_command, stage_done, stage_start
from recbase.io import atomic_write_text

# Published full-catalog results on P5 Beauty (Recall@5, Recall@10, NDCG@5, NDCG@10).
PUBLISHED = {
    "TIGER (Rajput et al. 2023)": (0.0454, 0.0648, 0.0321, 0.0384),
    "LC-Rec (as reported by later work)": (0.0525, 0.0791, 0.0352, 0.0438),
    "HSTU (as reported by later work)": (0.0486, 0.0708, 0.0340, 0.0412),
}
COLUMNS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
SELECT_ON = "ndcg@10"
SEED_RESULTS = "leave_one_out.json"   # a seed's validation and test results, beside its checkpoints
ENSEMBLE_RESULTS = "ensemble.json"    # the ensemble's, beside the run's report
PROTOCOL_KEYS = ("max_history", "beam_width", "valid_users", "ks")   # settings a seed's results depend on
FUSION_KEYS = ("fusion_text_items", "fusion_decays", "fusion_scales", "fusion_alphas")   # and its fused ranking
FUSED_ROW, GENERATIVE_ROW = "recbase, generative + text fusion", "recbase, generative only"
ENSEMBLE_ROW = "recbase, {n}-seed ensemble"


@dataclass
class InDomainConfig:
    source: str = "../shared/data/amazon-beauty-p5"   # a P5-format folder (sequential_data.txt, datamaps.json, ...)
    format: str = "p5"                        # reader of the source (recbase ingest formats)
    domain: str = ""                          # domain name; "" = from the source folder's name
    out: str = "runs/beauty"                  # everything is written under this folder
    run_name: str = "run"                     # model runs go to <out>/<run_name>/seed<N>/, reports to <out>/<run_name>/
    seeds: list[int] = field(default_factory=lambda: [0])   # one model per seed; the table shows mean and spread
    embedder: str = "all-MiniLM-L6-v2"        # text encoder of the item titles
    tokenizer_config: str = "tokenizer_clvae.json"  # launch/configs name or path
    tokenizer_overrides: list[str] = field(default_factory=list)  # e.g. kind=rqkmeans levels=3 codebook_size=256
    tokenizer_seed: int = 0                   # the tokenizer is trained once, shared by every model seed
    train_config: str = "beauty_train.json"   # launch/configs name or path
    train_steps: int = 2000                   # optimizer steps per model
    checkpoint_every: int = 500               # checkpoints compared on the validation targets
    train_overrides: list[str] = field(default_factory=list)  # extra key=value for the train config
    max_history: int = 20                     # history cap in items (TIGER: 20)
    beam_width: int = 20                      # beams per level; items returned = beam_width (tuples are unique)
    retrieval_batch_users: int = 16           # users per beam-search forward
    valid_users: int = 0                      # users ranked per checkpoint for the selection (0 = all)
    ks: list[int] = field(default_factory=lambda: [5, 10])
    threads: int = 0                          # torch/OpenMP threads of training and ranking (0 = torch's default)
    test: bool = True                         # false: stop after the validation ranking (comparing levers)
    fusion: bool = True                       # also rank the beam's items ∪ text candidates by log P + alpha * text
    fusion_text_items: int = 100              # text candidates per user added to the beam's items
    # text profile: weight decay**j on the j-th most recent history item (0 = the last item only, text kNN's)
    fusion_decays: list[float] = field(default_factory=lambda: [0.0, 0.5])
    fusion_scales: list[str] = field(default_factory=lambda: ["raw", "z"])   # raw scores, or standardised per user
    fusion_alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0,
                                                                12.0, 16.0, 32.0, 64.0])   # weights of the text score
    ensemble: bool = False                    # also rank with every seed's selected checkpoint together (mean log P)

    def validate(self) -> "InDomainConfig":
        """Reject settings that cannot run, naming the key, in one line."""
        from recbase.eval.fusion import SCALES

        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one model seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds={self.seeds} repeats a seed: each seed is one model")
        if self.ensemble and len(self.seeds) < 2:
            raise ConfigError(f"ensemble=true needs at least two seeds (models to average), got seeds={self.seeds}")
        if self.ensemble and not self.fusion:
            raise ConfigError("ensemble=true ranks the fusion's candidates with every model: it needs fusion=true")
        check_ranges(self, {"beam_width": AT_LEAST_1, "max_history": AT_LEAST_1, "valid_users": AT_LEAST_0,
                            "fusion_text_items": AT_LEAST_0})
        if self.fusion:
            for key in ("fusion_decays", "fusion_scales", "fusion_alphas"):
                if not getattr(self, key):
                    raise ConfigError(f"{key} is empty: give at least one value to choose from on validation")
            for d in self.fusion_decays:
                if d not in Range(0, 1):
                    raise ConfigError(f"fusion_decays: {d} is outside the allowed range {Range(0, 1)}")
            for a in self.fusion_alphas:
                if a not in AT_LEAST_0:
                    raise ConfigError(f"fusion_alphas: {a} is outside the allowed range {AT_LEAST_0}")
            for scale in self.fusion_scales:
                if scale not in SCALES:
                    raise ConfigError(f"fusion_scales: {scale!r} is not {' | '.join(SCALES)}")
        return self


def _prepare(cfg: InDomainConfig, out: Path, domain: str) -> tuple[Path, Path, Path]:
    """Stages 1-4: tables, embeddings, tokenizer and codes, shards. Returns (data, embeddings, shards) folders."""
    from recbase.config import load_config
    from recbase.data.codes import read_codes
    from recbase.data.ingest import ingest
    from recbase.data.shards import ShardConfig, build_shards
    from recbase.data.tables import has_tables
    from recbase.eval.leave_one_out import SPLITS
    from recbase.tokenizer.artifact import load_tokenizer
    from recbase.tokenizer.collisions import collision_rate
    from recbase.tokenizer.embed import embed_folder
    from recbase.tokenizer.encode import write_codes
    from recbase.tokenizer.train import TokenizerConfig, train_from_folders
    from recbase.train.config import CONFIG_DIR

    data, emb, tok_dir, codes = out / "data", out / "embeddings", out / "tokenizer", out / "codes.parquet"
    t0 = stage_start(f"1/6 {cfg.format} tables of {cfg.source}")
    if not has_tables(data / domain):
        summary = ingest(cfg.format, cfg.source, data, domain=domain, min_user_interactions=0, max_history=0)
        print(summary.format())
    stage_done(t0, f"tables in {data / domain}")

    t0 = stage_start("2/6 text embeddings")
    for s in embed_folder(data, emb, cfg.embedder, domains=[domain]):
        state = "up to date" if s["skipped"] else f"embedded {s['embedded']:,} items"
        print(f"[{s['domain']}] {s['n_items']:,} x {s['dim']} ({s['model']}): {state}")
    stage_done(t0, f"embeddings in {emb}")

    t0 = stage_start("3/6 item tokenizer (with a collision level: one code tuple per item)")
    tcfg = load_config(TokenizerConfig, cfg.tokenizer_config,
                       [f"seed={cfg.tokenizer_seed}", *cfg.tokenizer_overrides, "disambiguate=true"], [CONFIG_DIR])
    if not (tok_dir / "config.json").exists():
        # a popularity-ordered collision level counts training interactions only: targets play no part
        train_from_folders(tcfg, data, emb, tok_dir, [domain], exclude_last=len(SPLITS))
    tok = load_tokenizer(tok_dir)
    asked = (tcfg.kind, tcfg.levels, tcfg.codebook_size, tcfg.collision_order)
    found = (tok.kind, tok.levels, tok.codebook_size, tok.collision_order)
    if asked != found:
        raise ValueError(f"{tok_dir} holds a {found} tokenizer (kind, levels, codebook size, collision order), not "
                         f"the {asked} asked for; its codes, shards and models would be reused: give another out")
    if not codes.exists():
        write_codes(tok, data, emb, codes, [domain])
    code_rows = read_codes(codes).by_domain[domain][1]
    stage_done(t0, f"tokenizer {tok.hash[:12]} ({tok.kind}, {tok.levels} x {tok.codebook_size} + collision level "
              f"in {tok.collision_order} order), "
              f"{100 * collision_rate(code_rows[:, :tok.levels]):.2f}% of items share their {tok.levels} codes")

    t0 = stage_start("4/6 shards (each user's last two items held out)")
    shards = build_shards(ShardConfig(data_dir=str(data), domains=[domain], codes_path=str(codes),
                                      out_dir=str(out / "shards"), name=domain, holdout=1, seed=0))
    stage_done(t0, f"shards in {shards}")
    return data, emb, shards


def _train(cfg: InDomainConfig, shards: Path, run_dir: Path, seed: int) -> list[Path]:
    """Stage 5 for one seed: the checkpoints of the run, oldest first."""
    if not (run_dir / "hf" / "config.json").exists():
        run_command("pretrain", "--config", cfg.train_config, f"data.shards={shards}", f"seed={seed}",
                     f"optim.max_steps={cfg.train_steps}", f"checkpoint.every_steps={cfg.checkpoint_every}",
                     f"checkpoint.dir={run_dir / 'checkpoints'}", f"checkpoint.export_dir={run_dir / 'hf'}",
                     f"logging.dir={run_dir / 'logs'}", f"run_name={run_dir.name}", *cfg.train_overrides)
    found = [p for p in (run_dir / "checkpoints").glob("global_step*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("global_step")))


def _subset(loo, n: int):
    """The first ``n`` users of a leave-one-out set (all when ``n`` is 0): users are in a fixed order."""
    from recbase.eval.leave_one_out import LeaveOneOutSet

    if not n or n >= len(loo):
        return loo
    return LeaveOneOutSet(loo.domain, loo.split, loo.user_ids[:n], loo.histories[:n], loo.targets[:n], loo.skipped)


def _saved_results(run_dir: Path, report_dir: Path, seed: int, protocol: dict) -> dict | None:
    """A seed's results from an earlier run of the same protocol: its own file, or the run's ``metrics.json``."""
    own = run_dir / SEED_RESULTS
    if own.exists():
        saved = json.loads(own.read_text(encoding="utf-8"))
        return saved if saved.get("protocol") == protocol else None
    report = report_dir / "metrics.json"
    if report.exists():
        old = json.loads(report.read_text(encoding="utf-8"))
        entry = old.get("seeds", {}).get(str(seed))
        if entry and {k: old["config"].get(k) for k in PROTOCOL_KEYS} == protocol:
            return {"protocol": protocol, **entry}
    return None


def _cost(cands) -> dict:
    """What a fused ranking pass cost: seconds per part, and the text candidates per user scored by teacher forcing
    (the beam's items come with their log P)."""
    users = len(cands.n_beam)
    return {**cands.seconds, "beam_reused": cands.beam_reused, "users": users, "pairs": cands.pairs,
            "candidates_per_user": round(cands.pairs / users, 1),
            "users_per_s": round(users / max(sum(cands.seconds.values()), 1e-9), 1)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_indomain(cfg: InDomainConfig) -> dict:
    """Run every stage; returns the results (also in ``<out>/<run_name>/metrics.json``)."""
    import torch

    from recbase.data.codes import read_codes
    from recbase.data.readers import default_domain
    from recbase.data.sequences import load_domain
    from recbase.data.tables import read_item_ids
    from recbase.eval.beam_store import beam_key, beam_path, describe, saved_or_searched
    from recbase.eval.fusion import Setting, collect_candidates, fused_ranks, generative_ranks, grid
    from recbase.eval.leave_one_out import (baseline_metrics, beam_metrics, leave_one_out, model_metrics,
                                            search_beams, training_counts)
    from recbase.eval.metrics import retrieval_metrics
    from recbase.eval.model_io import check_tokenizer_hash, load_eval_model
    from recbase.eval.retrieval import Retriever
    from recbase.eval.scoring import CandidateScorer
    from recbase.eval.trie import CodeTrie
    from recbase.tokenizer.embed import load_embeddings

    cfg.validate()
    if cfg.threads:
        # On a shared machine a second intra-op thread of a model this small mostly spin-waits: one thread ranked
        # users ten times faster than two on the 2-core machine of docs/evaluation.md.
        torch.set_num_threads(cfg.threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)   # inherited by the training processes
    t_start = time.perf_counter()
    out = Path(cfg.out)
    report_dir = out / cfg.run_name
    report_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, report_dir / "indomain_config.json")
    domain = cfg.domain or default_domain(cfg.source)
    data, emb, shards = _prepare(cfg, out, domain)

    codes = read_codes(out / "codes.parquet")
    seqs = load_domain(data / domain, codes)
    item_ids, item_codes = codes.by_domain[domain]
    item_ids = item_ids.to_pylist()
    vocab = codes.vocab
    item_tokens = vocab.encode_codes(item_codes)
    splits = {s: leave_one_out(seqs, s, cfg.max_history) for s in ("valid", "test")}
    if read_item_ids(data / domain) != item_ids:
        raise ValueError(f"{out / 'codes.parquet'}: items are not in the order of {data / domain}/items.parquet")
    embeddings = load_embeddings(emb, domain, item_ids)[0].astype(np.float32)
    counts = training_counts(seqs, len(item_ids))
    # checkpoints are chosen on these users; the baselines' validation numbers are on the same ones
    splits["valid"] = _subset(splits["valid"], cfg.valid_users)
    results: dict = {"config": to_dict(cfg), "domain": domain, "tokenizer_hash": codes.tokenizer_hash,
                     "catalog_items": len(item_ids), "users": {s: len(v) for s, v in splits.items()},
                     "skipped": splits["test"].skipped,
                     "baselines": {s: baseline_metrics(v, counts, embeddings, cfg.ks) for s, v in splits.items()},
                     "seeds": {}}

    trie = CodeTrie.build(item_codes, item_ids, vocab.codebook_size)
    if trie.n_tuples != len(item_ids):
        raise ValueError(f"{trie.n_tuples} code tuples for {len(item_ids)} items: the protocol needs one per item")
    expected = {str(out / "codes.parquet"): codes.tokenizer_hash}
    valid = splits["valid"]
    protocol = {k: to_dict(cfg)[k] for k in PROTOCOL_KEYS}

    def retriever(ckpt: Path) -> Retriever:
        em = load_eval_model(ckpt.name, ckpt, "auto")
        check_tokenizer_hash(em, expected)
        return Retriever(em.model, trie, vocab.n_special, vocab.bos_id, cfg.beam_width,
                         batch_users=cfg.retrieval_batch_users, pad_id=vocab.pad_id)

    def candidates(ckpts: list[Path], loo, decays: list[float], desc: str):
        """One checkpoint's fusion candidates, or with several the ensemble's. Each checkpoint's beam on ``loo`` is
        read back from its seed's folder when an earlier pass saved it under the same key, else searched and saved."""
        models, beams = [], {}
        for ckpt in ckpts:
            beam = retriever(ckpt)
            name = f"{ckpt.parents[1].name} {ckpt.name}"
            key = beam_key(ckpt, beam, loo, item_ids, item_tokens, cfg.max_history)
            beams[name] = saved_or_searched(beam_path(ckpt.parents[1], loo.split), key, loo.user_ids, partial(
                search_beams, beam, loo, item_tokens, vocab, f"{desc}: beam of {name}"))
            models.append((beams[name], CandidateScorer(beam.model, item_tokens.shape[1], vocab.bos_id,
                                                        pad_id=vocab.pad_id)))
        print(f"[{desc}] {describe(beams)}")
        return collect_candidates(models, loo, item_tokens, vocab, item_ids, embeddings, decays,
                                  cfg.fusion_text_items, desc=desc)

    fusion_protocol = {k: to_dict(cfg)[k] for k in FUSION_KEYS}
    settings = grid(cfg.fusion_decays, cfg.fusion_scales, cfg.fusion_alphas)

    def fused_valid(cands) -> dict:
        """Every setting of the grid on the validation targets, and the one chosen."""
        per_setting = {s.name: retrieval_metrics(fused_ranks(cands, valid.targets, s), cfg.ks) for s in settings}
        chosen = max(per_setting, key=lambda name: per_setting[name][SELECT_ON])
        return {"protocol": fusion_protocol, "valid": per_setting, "chosen": chosen, "valid_cost": _cost(cands)}

    def fused_test(cands, chosen: Setting) -> dict:
        return {**retrieval_metrics(fused_ranks(cands, splits["test"].targets, chosen), cfg.ks), "cost": _cost(cands)}

    for seed in cfg.seeds:
        run_dir = report_dir / f"seed{seed}"
        saved = _saved_results(run_dir, report_dir, seed, protocol)
        if saved is None or not (run_dir / "hf" / "config.json").exists():
            t0 = stage_start(f"5/6 training, seed {seed} ({cfg.train_steps} steps)")
            checkpoints = _train(cfg, shards, run_dir, seed)
            stage_done(t0, f"{len(checkpoints)} checkpoints in {run_dir / 'checkpoints'}")
            t0 = stage_start(f"6/6 checkpoint selection on {len(valid):,} validation targets, seed {seed}")
            per_checkpoint = {}
            for ckpt in checkpoints:
                per_checkpoint[ckpt.name] = model_metrics(retriever(ckpt), valid, item_tokens, vocab, item_ids,
                                                          cfg.ks, desc=f"valid {ckpt.name}")
                print(f"[seed {seed}] {ckpt.name}: valid " + ", ".join(
                    f"{k} {per_checkpoint[ckpt.name][k]:.4f}" for k in COLUMNS))
            best = max(per_checkpoint, key=lambda name: per_checkpoint[name][SELECT_ON])
            saved = {"protocol": protocol, "valid": per_checkpoint, "selected": best}
            atomic_write_text(run_dir / SEED_RESULTS, json.dumps(saved, indent=2) + "\n")
            stage_done(t0, f"selected {best}: valid " + ", ".join(f"{k} {per_checkpoint[best][k]:.4f}"
                                                                  for k in COLUMNS))
        best = saved["selected"]
        if cfg.fusion and saved.get("fusion", {}).get("protocol") != fusion_protocol:
            t0 = stage_start(f"fusion with text: {len(settings)} settings on {len(valid):,} validation targets, "
                             f"seed {seed}, checkpoint {best}")
            cands = candidates([run_dir / "checkpoints" / best], valid, cfg.fusion_decays, f"fuse valid {best}")
            saved["fusion"] = fused = fused_valid(cands)
            atomic_write_text(run_dir / SEED_RESULTS, json.dumps(saved, indent=2) + "\n")
            stage_done(t0, f"chosen {fused['chosen']}: valid " + _metrics_line(fused["valid"][fused["chosen"]]))
        if cfg.test and cfg.fusion and "test" not in saved["fusion"]:
            chosen = Setting.parse(saved["fusion"]["chosen"])
            t0 = stage_start(f"test targets, seed {seed}, checkpoint {best}, fused with {chosen.name} "
                             f"(both selected on validation)")
            cands = candidates([run_dir / "checkpoints" / best], splits["test"], [chosen.decay], f"fuse test {best}")
            saved["fusion"]["test"] = fused_test(cands, chosen)
            # the beam of this pass is the generative ranking of the test targets
            saved.setdefault("test", beam_metrics(generative_ranks(cands, splits["test"].targets), cfg.ks,
                                                  cands.seconds["beam"] + cands.beam_reused, cfg.beam_width))
            atomic_write_text(run_dir / SEED_RESULTS, json.dumps(saved, indent=2) + "\n")
            stage_done(t0, "test, fused " + _metrics_line(saved["fusion"]["test"]) +
                       "; generative only " + _metrics_line(saved["test"]))
        elif cfg.test and "test" not in saved:
            t0 = stage_start(f"test targets, seed {seed}, checkpoint {best} (selected on validation)")
            saved["test"] = model_metrics(retriever(run_dir / "checkpoints" / best), splits["test"], item_tokens,
                                          vocab, item_ids, cfg.ks, desc=f"test {best}")
            atomic_write_text(run_dir / SEED_RESULTS, json.dumps(saved, indent=2) + "\n")
            stage_done(t0, "test " + ", ".join(f"{k} {saved['test'][k]:.4f}" for k in COLUMNS))
        elif cfg.test:
            print(f"[seed {seed}] evaluated before: selected {best}, test " +
                  ", ".join(f"{k} {saved['test'][k]:.4f}" for k in COLUMNS))
        results["seeds"][str(seed)] = saved

    if cfg.ensemble:
        members = {str(seed): results["seeds"][str(seed)]["selected"] for seed in cfg.seeds}
        ckpts = [report_dir / f"seed{seed}" / "checkpoints" / members[str(seed)] for seed in cfg.seeds]
        ens_protocol = {**protocol, **fusion_protocol, "members": members}
        ens_path = report_dir / ENSEMBLE_RESULTS
        ens = json.loads(ens_path.read_text(encoding="utf-8")) if ens_path.exists() else {}
        named = ", ".join(f"seed {seed} {name}" for seed, name in members.items())
        if ens.get("protocol") != ens_protocol:
            t0 = stage_start(f"ensemble of {len(ckpts)} models ({named}) fused with text: {len(settings)} settings "
                             f"on {len(valid):,} validation targets")
            cands = candidates(ckpts, valid, cfg.fusion_decays, "ensemble valid")
            ens = {**fused_valid(cands), "protocol": ens_protocol,
                   "generative_valid": retrieval_metrics(generative_ranks(cands, valid.targets), cfg.ks)}
            atomic_write_text(ens_path, json.dumps(ens, indent=2) + "\n")
            stage_done(t0, f"chosen {ens['chosen']}: valid " + _metrics_line(ens["valid"][ens["chosen"]]) +
                       "; generative only " + _metrics_line(ens["generative_valid"]))
        if cfg.test and "test" not in ens:
            chosen = Setting.parse(ens["chosen"])
            t0 = stage_start(f"test targets, ensemble of {named}, fused with {chosen.name} (chosen on validation)")
            cands = candidates(ckpts, splits["test"], [chosen.decay], "ensemble test")
            ens["test"] = fused_test(cands, chosen)
            ens["generative_test"] = retrieval_metrics(generative_ranks(cands, splits["test"].targets), cfg.ks)
            atomic_write_text(ens_path, json.dumps(ens, indent=2) + "\n")
            stage_done(t0, "test, fused " + _metrics_line(ens["test"]) +
                       "; generative only " + _metrics_line(ens["generative_test"]))
        results["ensemble"] = ens

    results["seconds"] = round(time.perf_counter() - t_start, 1)
    tested = [s["test"] for s in results["seeds"].values() if "test" in s]
    results["test"] = {k: _mean_std([t[k] for t in tested]) for k in COLUMNS} if cfg.test else None
    fused = [s["fusion"]["test"] for s in results["seeds"].values() if "test" in s.get("fusion", {})]
    results["fusion_test"] = ({k: _mean_std([t[k] for t in fused]) for k in COLUMNS}
                              if cfg.test and cfg.fusion else None)
    atomic_write_text(report_dir / "metrics.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(report_dir / "report.md", render_report(results))
    print(render_report(results))
    return results


def _metrics_line(metrics: dict) -> str:
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in COLUMNS)


def _row(name: str, values) -> str:
    return f"| {name} | " + " | ".join(values) + " |"


def render_report(results: dict) -> str:
    """The Markdown table: this run (mean ± spread over seeds), its baselines, and the published numbers."""
    seeds = list(results["seeds"])
    users = results["users"]["test"]
    lines = [f"# In-domain leave-one-out: {results['domain']}", "",
             f"{users:,} users, full ranking of {results['catalog_items']:,} items, history <= "
             f"{results['config']['max_history']} items, beam width {results['config']['beam_width']}, "
             f"checkpoint chosen on validation {SELECT_ON}; {len(seeds)} seed(s): {', '.join(seeds)}; "
             f"this invocation took {results['seconds']:.0f} s.", "",
             "| test | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    spread = len(seeds) > 1

    def model_row(name: str, test: dict | None) -> str:
        if test is None:
            return _row(name, ["not ranked (test=false)"] * len(COLUMNS))
        return _row(name, [f"{m:.4f}" + (f" ± {s:.4f}" if spread else "") for m, s in (test[c] for c in COLUMNS)])

    def single_row(name: str, test: dict | None) -> str:
        return _row(name, [f"{test[c]:.4f}" if test else "not ranked (test=false)" for c in COLUMNS])

    if results["config"].get("fusion"):
        lines.append(model_row(f"{FUSED_ROW} (this run)", results.get("fusion_test")))
        lines.append(model_row(f"{GENERATIVE_ROW} (this run)", results["test"]))
    else:
        lines.append(model_row("recbase (this run)", results["test"]))
    ensemble = results.get("ensemble")
    if ensemble:
        name = ENSEMBLE_ROW.format(n=len(ensemble["protocol"]["members"]))
        lines.append(single_row(f"{name} + text fusion (this run; one ranking, no spread)", ensemble.get("test")))
        lines.append(single_row(f"{name}, generative only (this run)", ensemble.get("generative_test")))
    for name, metrics in results["baselines"]["test"].items():
        lines.append(_row(f"{name} (same run)", [f"{metrics[c]:.4f}" for c in COLUMNS]))
    for name, values in PUBLISHED.items():
        lines.append(_row(f"{name}, published", [f"{v:.4f}" for v in values]))
    lines += ["", f"Validation (checkpoint selection, {results['users']['valid']:,} users):", "",
              "| seed | checkpoint | " + " | ".join(COLUMNS) + " | users/s |",
              "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for seed, r in results["seeds"].items():
        for name, m in r["valid"].items():
            mark = " (selected)" if name == r["selected"] else ""
            lines.append(f"| {seed} | {name}{mark} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) +
                         f" | {m['users'] / max(m['seconds'], 1e-9):.1f} |")
    for name, metrics in results["baselines"]["valid"].items():
        lines.append(f"| - | {name} | " + " | ".join(f"{metrics[c]:.4f}" for c in COLUMNS) + " | - |")
    fused = {f"seed {seed}": r["fusion"] for seed, r in results["seeds"].items() if "fusion" in r}
    if ensemble:
        fused["ensemble"] = ensemble
    if fused:
        lines += ["", f"Fusion with text on the selected checkpoint: candidates = the beam's items ∪ the "
                  f"{results['config']['fusion_text_items']} best of the text score, ranked by log P + alpha * text; "
                  f"the best alpha of each text profile (decay) and scale, on the same validation users:", "",
                  "| seed | setting | " + " | ".join(COLUMNS) + " | users/s |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
        for label, f in fused.items():
            for setting, m in _best_alphas(f["valid"]).items():
                mark = " (chosen)" if setting == f["chosen"] else ""
                lines.append(f"| {label} | {setting}{mark} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) +
                             f" | {f['valid_cost']['users_per_s']:.1f} |")
        if ensemble:
            m = ensemble["generative_valid"]
            lines.append("| ensemble | generative only: the union of the beams by mean log P | " +
                         " | ".join(f"{m[c]:.4f}" for c in COLUMNS) + " | - |")
        lines.append("")
        for label, f in fused.items():
            for split, cost in (("validation", f["valid_cost"]), ("test", f.get("test", {}).get("cost"))):
                if cost:
                    reused = (f" (+ {cost['beam_reused']:.0f} s saved: beams read back from an earlier pass)"
                              if cost.get("beam_reused") else "")
                    lines.append(f"- {label}, {split} pass: beam {cost['beam']:.0f} s{reused}, text scores "
                                 f"{cost['text']:.0f} s, teacher-forced log P of {cost['pairs']:,} candidates outside "
                                 f"the scoring model's beam ({cost['candidates_per_user']:.0f} per user) "
                                 f"{cost['scoring']:.0f} s")
        if ensemble:
            split, m, n = (("test", ensemble["test"], users) if "test" in ensemble else
                           ("validation", ensemble["valid"][ensemble["chosen"]], results["users"]["valid"]))
            lines.append(f"- the ensemble is one ranking, so it has no spread over seeds; its sampling error instead: "
                         f"one standard error of its {split} recall@10 over {n:,} users, "
                         f"±{_standard_error(m['recall@10'], n):.4f}")
    return "\n".join(lines) + "\n"


def _standard_error(rate: float, n: int) -> float:
    """Sampling error of a per-user hit rate such as Recall@K: the binomial standard error."""
    return float(np.sqrt(rate * (1 - rate) / max(n, 1)))


def _best_alphas(per_setting: dict) -> dict:
    """The best alpha (by the selection metric) of each decay and scale, in grid order."""
    from recbase.eval.fusion import Setting

    best: dict[tuple, str] = {}
    for name, m in per_setting.items():
        s = Setting.parse(name)
        key = (s.decay, s.scale)
        if key not in best or m[SELECT_ON] > per_setting[best[key]][SELECT_ON]:
            best[key] = name
    return {name: per_setting[name] for name in best.values()}
