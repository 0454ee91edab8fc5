"""The whole pipeline on the built-in demo world, on CPU, in minutes: what ``make demo`` runs.

demo world → MiniLM embeddings → CL-VAE tokenizer (trained on the pretraining domains only) → codes for every
domain → WebDataset shards of the pretraining domains + eval sets of the held-out domains → a tiny Qwen2
pretrained with DeepSpeed ZeRO-3 → a copy fine-tuned on the first held-out domain → zero-shot evaluation on the
held-out domains beside the baselines, with the fine-tuned model beside the zero-shot one (the paper's Table 3).

Every stage calls the same library function as its own command and writes under ``<out>/`` in the layout of
``docs/formats.md``. A stage whose output already exists is skipped, so an interrupted demo continues where it
stopped; ``--fresh`` starts over. Real domains join the same run by ingesting them into ``<out>/data`` first
(``recbase ingest ... --out <out>/data``) and naming them in ``pretrain_domains`` or ``heldout_domains``: only the
demo-world domains that are missing there are generated.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recbase.config import save_config


@dataclass
class DemoConfig:
    out: str = "demo_out"                    # everything is written under this folder
    seed: int = 0                            # seeds the world, the tokenizer, the shards and the model
    pretrain_domains: list[str] = field(default_factory=lambda: ["movies", "books", "games"])
    heldout_domains: list[str] = field(default_factory=lambda: ["news", "products"])  # never seen in training
    items_per_domain: int = 600              # demo-world catalog size per domain
    users_per_domain: int = 300              # demo-world users per domain
    embedder: str = "all-MiniLM-L6-v2"       # packaged offline encoder ('hashing' only for quick tests)
    tokenizer_config: str = "tokenizer_clvae.json"  # launch/configs name or path
    codebook_size: int = 64                  # K: ~1,800 training items fill 64 codes per level, not 256
    tokenizer_overrides: list[str] = field(default_factory=list)  # extra key=value for the tokenizer config
    train_config: str = "tiny.json"          # launch/configs name or path
    train_steps: int = 300                   # optimizer steps of the tiny model
    train_overrides: list[str] = field(default_factory=list)  # extra key=value for the train config
    finetune_steps: int = 100                # fine-tuning steps on the first held-out domain (0 = no fine-tuning)
    eval_negatives: int = 10                 # sampled negatives per held-out positive


def _stage(name: str):
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str) -> None:
    print(f"--- {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def _run_command(*args: str) -> None:
    """Run a ``recbase`` sub-command in its own process, as a user would: DeepSpeed keeps process-wide state
    (process groups, communication backends) that does not survive a second engine in the same interpreter, so
    pretraining and fine-tuning each get a fresh one."""
    proc = subprocess.run([sys.executable, "-m", "recbase.cli", *args])
    if proc.returncode:
        raise RuntimeError(f"recbase {args[0]} failed with exit status {proc.returncode} (its output is above)")


def run_demo(cfg: DemoConfig, fresh: bool = False) -> dict:
    """Run every stage; returns the evaluation results dict (also written to ``<out>/eval/metrics.json``)."""
    from recbase.data.synthetic import DOMAINS as WORLD_DOMAINS, generate_world
    from recbase.data.shards import EvalSetConfig, ShardConfig, build_shards
    from recbase.eval.job import EvalConfig, evaluate
    from recbase.config import load_config
    from recbase.tokenizer.artifact import load_tokenizer
    from recbase.tokenizer.embed import embed_folder
    from recbase.tokenizer.encode import write_codes
    from recbase.tokenizer.train import TokenizerConfig, train_from_folders
    from recbase.train.config import CONFIG_DIR

    out = Path(cfg.out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo_config.json")
    data, emb, tok_dir = out / "data", out / "embeddings", out / "tokenizer"
    codes, shards_root, run_dir = out / "codes.parquet", out / "shards", out / "run"
    domains = cfg.pretrain_domains + cfg.heldout_domains
    t_start = time.perf_counter()

    t0 = _stage("1/8 demo world")
    missing = [d for d in domains if not (data / d / "interactions.parquet").exists()]
    unknown = [d for d in missing if d not in WORLD_DOMAINS]
    if unknown:
        raise FileNotFoundError(f"domains {', '.join(unknown)} are not demo-world domains and have no tables in "
                                f"{data}: ingest them first (recbase ingest FORMAT PATH --out {data})")
    if missing:
        for s in generate_world(data, seed=cfg.seed, domains=missing, items_per_domain=cfg.items_per_domain,
                                users_per_domain=cfg.users_per_domain):
            print(s.format())
    _done(t0, f"tables in {data}")

    t0 = _stage("2/8 text embeddings")
    for s in embed_folder(data, emb, cfg.embedder, domains=domains):
        state = "up to date" if s["skipped"] else f"embedded {s['embedded']:,} items"
        print(f"[{s['domain']}] {s['n_items']:,} x {s['dim']} ({s['model']}): {state}")
    _done(t0, f"embeddings in {emb}")

    t0 = _stage(f"3/8 item tokenizer (trained on {', '.join(cfg.pretrain_domains)})")
    if not (tok_dir / "config.json").exists():
        tcfg = load_config(TokenizerConfig, cfg.tokenizer_config,
                           [f"codebook_size={cfg.codebook_size}", f"seed={cfg.seed}", *cfg.tokenizer_overrides],
                           [CONFIG_DIR])
        train_from_folders(tcfg, data, emb, tok_dir, cfg.pretrain_domains)
    tok = load_tokenizer(tok_dir)
    if not codes.exists():
        write_codes(tok, data, emb, codes, domains)
    _done(t0, f"tokenizer {tok.hash[:12]} ({tok.kind}, {tok.levels} x {tok.codebook_size}), codes in {codes}")

    t0 = _stage("4/8 shards and eval sets")
    shard_dir = build_shards(ShardConfig(
        data_dir=str(data), domains=cfg.pretrain_domains, heldout_domains=cfg.heldout_domains,
        codes_path=str(codes), out_dir=str(shards_root), name="demo", seed=cfg.seed,
        eval=EvalSetConfig(positives=1, negatives_per_positive=cfg.eval_negatives)))
    _done(t0, f"shards in {shard_dir}")

    t0 = _stage("5/8 pretraining (DeepSpeed ZeRO-3, CPU)")
    hf_dir = run_dir / "hf"
    if not (hf_dir / "config.json").exists():
        _run_command("pretrain", "--config", cfg.train_config,
                     f"data.shards={shard_dir}", f"seed={cfg.seed}", f"optim.max_steps={cfg.train_steps}",
                     f"checkpoint.dir={run_dir / 'checkpoints'}", f"checkpoint.export_dir={hf_dir}",
                     f"logging.dir={run_dir / 'logs'}", *cfg.train_overrides)
    _done(t0, f"model in {hf_dir}")

    models = {"zero-shot": str(hf_dir)}
    if cfg.finetune_steps > 0:
        target = cfg.heldout_domains[0]
        t0 = _stage(f"6/8 fine-tuning on {target} (not zero-shot)")
        ft_dir = run_dir / "finetune"
        if not (ft_dir / "hf" / "config.json").exists():
            # the domain's own training shards: each user's last two items stay out, as in every shard set, so the
            # eval positives (the last item) are never trained on
            ft_shards = build_shards(ShardConfig(data_dir=str(data), domains=[target], codes_path=str(codes),
                                                 out_dir=str(shards_root), name=f"finetune-{target}", seed=cfg.seed))
            _run_command("finetune", "--init", str(hf_dir), "--config", "finetune.json",
                         f"data.shards={ft_shards}", f"seed={cfg.seed}", f"optim.max_steps={cfg.finetune_steps}",
                         f"checkpoint.dir={ft_dir / 'checkpoints'}", f"checkpoint.export_dir={ft_dir / 'hf'}",
                         f"logging.dir={ft_dir / 'logs'}")
        models[f"fine-tuned on {target}"] = str(ft_dir / "hf")
        _done(t0, f"model in {ft_dir / 'hf'}")

    t0 = _stage(f"7/8 evaluation on {', '.join(cfg.heldout_domains)}")
    results = evaluate(EvalConfig(
        models=models, eval_dir=str(shard_dir / "eval"), domains=cfg.heldout_domains,
        out_dir=str(out / "eval"), data_dir=str(data), embeddings_dir=str(emb), codes=str(codes),
        tokenizer_dir=str(tok_dir), seed=cfg.seed))
    _done(t0, f"report in {out / 'eval'}")

    _stage("8/8 the table")
    from recbase.eval.report import compact_table

    print(compact_table(results))
    print(f"(every metric, baseline and the retrieval table: {out / 'eval' / 'report.md'})")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s; everything is under {out}/")
    (out / "summary.json").write_text(json.dumps({"seconds": time.perf_counter() - t_start,
                                                  "overall": results.get("overall")}, indent=2) + "\n")
    return results
