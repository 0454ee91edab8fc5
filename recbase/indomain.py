"""The in-domain benchmark: TIGER's table on a P5-format split (Amazon Beauty by default), from one command.

P5 folder → items and interactions tables → MiniLM text embeddings → item tokenizer trained on the domain, with
a collision level so every item has its own code tuple → shards (each user's last two items held out) → one
Qwen2 per seed trained with DeepSpeed, a checkpoint every ``checkpoint_every`` steps → every checkpoint ranked
on the validation targets, the best one (by NDCG@10) evaluated once on the test targets → the table, with the
baselines of the same run and the published numbers, in ``<out>/<run_name>/report.md`` and ``metrics.json``.

The protocol is :mod:`recbase.eval.leave_one_out`. Every stage writes under ``<out>/`` and is skipped when its
output exists, so an interrupted run continues where it stopped; a seed's results (``leave_one_out.json`` beside
its checkpoints) are reused when the protocol settings are the same, so adding a seed ranks only the new model.
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
from pathlib import Path

import numpy as np

from recbase.config import save_config, to_dict
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
PROTOCOL_KEYS = ("max_history", "beam_width", "valid_users", "ks")   # settings a seed's results depend on


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


def _prepare(cfg: InDomainConfig, out: Path, domain: str) -> tuple[Path, Path, Path]:
    """Stages 1-4: tables, embeddings, tokenizer and codes, shards. Returns (data, embeddings, shards) folders."""
    from recbase.config import load_config
    from recbase.data.codes import read_codes
    from recbase.data.ingest import ingest
    from recbase.data.shards import ShardConfig, build_shards
    from recbase.data.tables import has_tables
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
        train_from_folders(tcfg, data, emb, tok_dir, [domain])
    tok = load_tokenizer(tok_dir)
    asked, found = (tcfg.kind, tcfg.levels, tcfg.codebook_size), (tok.kind, tok.levels, tok.codebook_size)
    if asked != found:
        raise ValueError(f"{tok_dir} holds a {found} tokenizer (kind, levels, codebook size), not the {asked} "
                         f"asked for; its codes, shards and models would be reused: give another out")
    if not codes.exists():
        write_codes(tok, data, emb, codes, [domain])
    code_rows = read_codes(codes).by_domain[domain][1]
    stage_done(t0, f"tokenizer {tok.hash[:12]} ({tok.kind}, {tok.levels} x {tok.codebook_size} + collision level), "
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_indomain(cfg: InDomainConfig) -> dict:
    """Run every stage; returns the results (also in ``<out>/<run_name>/metrics.json``)."""
    import torch

    from recbase.data.codes import read_codes
    from recbase.data.readers import default_domain
    from recbase.data.sequences import load_domain
    from recbase.data.tables import read_item_ids
    from recbase.eval.leave_one_out import baseline_metrics, leave_one_out, model_metrics, training_counts
    from recbase.eval.model_io import check_tokenizer_hash, load_eval_model
    from recbase.eval.retrieval import Retriever
    from recbase.eval.trie import CodeTrie
    from recbase.tokenizer.embed import load_embeddings

    if not cfg.seeds:
        raise ValueError("seeds is empty: give at least one model seed")
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
        if cfg.test and "test" not in saved:
            best = saved["selected"]
            t0 = stage_start(f"test targets, seed {seed}, checkpoint {best} (selected on validation)")
            saved["test"] = model_metrics(retriever(run_dir / "checkpoints" / best), splits["test"], item_tokens,
                                          vocab, item_ids, cfg.ks, desc=f"test {best}")
            atomic_write_text(run_dir / SEED_RESULTS, json.dumps(saved, indent=2) + "\n")
            stage_done(t0, "test " + ", ".join(f"{k} {saved['test'][k]:.4f}" for k in COLUMNS))
        elif cfg.test:
            print(f"[seed {seed}] evaluated before: selected {saved['selected']}, test " +
                  ", ".join(f"{k} {saved['test'][k]:.4f}" for k in COLUMNS))
        results["seeds"][str(seed)] = saved

    results["seconds"] = round(time.perf_counter() - t_start, 1)
    tested = [s["test"] for s in results["seeds"].values() if "test" in s]
    results["test"] = {k: _mean_std([t[k] for t in tested]) for k in COLUMNS} if cfg.test else None
    atomic_write_text(report_dir / "metrics.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(report_dir / "report.md", render_report(results))
    print(render_report(results))
    return results


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
    if results["test"] is None:
        lines.append(_row("recbase (this run)", ["not ranked (test=false)"] * len(COLUMNS)))
    else:
        lines.append(_row("recbase (this run)", [f"{m:.4f}" + (f" ± {s:.4f}" if spread else "")
                                                 for m, s in (results["test"][c] for c in COLUMNS)]))
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
    return "\n".join(lines) + "\n"
