"""The pipeline runner: one JSON config from datasets to shards (and on to a pretrained, evaluated model).

datasets (readers or presets) + demo-world domains → tables → text embeddings → item tokenizer (trained on the
pretraining domains only) → codes for every domain → WebDataset shards of the pretraining domains + eval sets of
the held-out domains → [a Qwen2 pretrained with DeepSpeed ZeRO-3 → a copy fine-tuned on the first held-out
domain → zero-shot evaluation beside the baselines] → a per-domain summary (JSON, Markdown, PNG).

The demo (``recbase demo``; the defaults of :class:`PipelineConfig`), a real-data run (``demo_real.json``) and the
whole shared corpus (``corpus_shared.json``, ``train_steps=0``) are configs of this one runner; every stage calls
the same library function as its own command.

Resuming: a stage writes its outputs atomically or in resumable pieces (embedding chunks, shard files), then a stamp
``<out>/stages/<stage>.json`` with the fingerprint of what it was made from (its options and the fingerprints of the
stages it reads; for a dataset's ingest, its config entry and the SHA-256 of the files it reads, cached in
``<out>/stages/file-hashes.json`` by path, size and mtime) and its wall time. Paths inside the run folder enter
fingerprints and stamps relative to it (``<out>/...``), so a run folder that was copied or moved is up to date where
it lands. A rerun skips a stage whose stamp matches and runs it otherwise, after deleting its outputs when they were
made from something else. A stage killed half way has no stamp; it runs again and continues from its partial output,
which its ``.started`` marker ties to the same fingerprint. ``--fresh`` deletes only what the runner wrote: its
stage folders and the domain tables it made, never tables ingested into ``<out>/data`` by hand or any other file in
``<out>``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from recbase.config import to_dict
from recbase.errors import UserError
from recbase.io import atomic_write_text


@dataclass
class DatasetConfig:
    """One dataset to ingest into ``<out>/data/<domain>``."""

    domain: str = ""                     # domain name (the folder under <out>/data and the `domain` column)
    preset: str = ""                     # ingest preset (recbase/data/presets), or else:
    format: str = ""                     # reader format (recbase.data.readers.FORMATS)
    path: str = ""                       # the dataset folder; a relative path is relative to the working directory
    kind: str = ""                       # template kind (recbole, generic; overrides the preset's)
    spec: dict = field(default_factory=dict)   # GenericSpec fields (format generic)
    min_user_interactions: int = 15      # drop users with fewer interactions (paper: 15; 0 keeps all)
    max_history: int = 2500              # keep each user's last N interactions (paper: 2500; 0 keeps all)
    interacted_items_only: bool = False  # keep only catalog items that a kept interaction uses


@dataclass
class PipelineConfig:
    """The defaults are the demo: five demo-world domains, three pretrained on, two held out."""

    out: str = "demo_out"                    # everything is written under this folder
    seed: int = 0                            # seeds the world, the tokenizer, the shards and the model
    datasets: list[DatasetConfig] = field(default_factory=list)   # real datasets to ingest
    pretrain_domains: list[str] = field(default_factory=lambda: ["movies", "books", "games"])
    heldout_domains: list[str] = field(default_factory=lambda: ["news", "products"])  # never seen in training
    items_per_domain: int = 600              # demo-world catalog size per domain
    users_per_domain: int = 300              # demo-world users per domain
    embedder: str = "all-MiniLM-L6-v2"       # packaged offline encoder ('hashing' only for quick tests)
    embed_batch_size: int = 64               # texts per encoder batch
    tokenizer_config: str = "tokenizer_clvae.json"  # launch/configs name or path
    codebook_size: int = 64                  # K: ~1,800 training items fill 64 codes per level, not 256
    tokenizer_overrides: list[str] = field(default_factory=list)  # extra key=value for the tokenizer config
    shards_name: str = "demo"                # shards go to <out>/shards/<shards_name>
    tokens_per_shard: int = 16_000_000       # a shard closes after about this many tokens
    shard_workers: int = 1                   # processes writing shards
    eval_negatives: int = 10                 # sampled negatives per held-out positive
    eval_max_pairs: int = 20_000             # (user, candidate) pairs per held-out domain at most
    train_config: str = "tiny.json"          # launch/configs name or path
    train_steps: int = 300                   # optimizer steps of the model (0 = stop after shards and summary)
    train_overrides: list[str] = field(default_factory=list)  # extra key=value for the train config
    embedding_head: bool = True              # train the next-item text-embedding head on this run's tokenizer
    text_inputs: bool = False                # give the model the items' text vectors (this run's tokenizer) as inputs
    head_recency: str = "real"               # the attention head's recency biases: real (fitted on the pretraining
                                             # domains from dataset files, then fixed) | learned (in pretraining)
    finetune_steps: int = 100                # fine-tuning steps on the first held-out domain (0 = no fine-tuning)


STAGES_DIR = "stages"
HASH_CACHE = "file-hashes.json"   # in STAGES_DIR: the datasets' file hashes by path, size and mtime (not a stamp)
CONFIG_FILE = "pipeline_config.json"
N_STAGES = 8
HEAD_RECENCY = ("real", "learned")
RECENCY_FILE = "head_recency.json"   # in <out>/run: the recency biases the run's attention head keeps fixed


class PipelineError(UserError):
    """A config that cannot run, found before any work starts."""


# --------------------------------------------------------------------------------------------------- checks


def check_config(cfg: PipelineConfig) -> dict[str, str]:
    """Every name the config uses, checked before any work starts; returns ``{domain: source}`` where source is
    ``dataset``, ``world`` or ``provided`` (tables already in ``<out>/data``)."""
    from recbase.data.presets import preset_names, unknown_name_message
    from recbase.data.readers import FORMATS
    from recbase.data.synthetic import DOMAINS as WORLD_DOMAINS
    from recbase.data.tables import has_tables

    problems = []
    sources: dict[str, str] = {}
    for i, d in enumerate(cfg.datasets):
        where = f"datasets[{i}]"
        if not d.domain:
            problems.append(f"{where}: no domain name")
        elif d.domain in sources:
            problems.append(f"{where}: domain {d.domain!r} is named by two datasets")
        if bool(d.preset) == bool(d.format):
            problems.append(f"{where}: name exactly one of preset or format")
        elif d.preset and d.preset not in preset_names():
            problems.append(f"{where}: {unknown_name_message('preset', d.preset, preset_names())}")
        elif d.format and d.format not in FORMATS:
            problems.append(f"{where}: {unknown_name_message('format', d.format, sorted(FORMATS))}")
        if not d.path:
            problems.append(f"{where}: no path")
        elif not Path(d.path).exists():
            problems.append(f"{where}: path {d.path} not found (relative paths are relative to {Path.cwd()})")
        sources.setdefault(d.domain, "dataset")
    data = Path(cfg.out) / "data"
    for name in cfg.pretrain_domains + cfg.heldout_domains:
        if name in sources:
            continue
        made_here = (Path(cfg.out) / STAGES_DIR / f"tables-{name}.started.json").exists()
        if name in WORLD_DOMAINS and (made_here or not (data / name).exists()):
            sources[name] = "world"
        elif has_tables(data / name):
            sources[name] = "provided"
    available = sorted(set(sources) | set(WORLD_DOMAINS))
    for name in dict.fromkeys(cfg.pretrain_domains + cfg.heldout_domains):
        if name not in sources:
            problems.append(f"{unknown_name_message('domain', name, available)}: it is not a dataset of this config, "
                            f"a demo-world domain or a folder of {data}; add it to datasets, or ingest it first "
                            f"(recbase ingest FORMAT PATH --out {data} --domain {name})")
    both = sorted(set(cfg.pretrain_domains) & set(cfg.heldout_domains))
    if both:
        problems.append(f"domains {', '.join(both)} are both pretraining and held-out domains")
    if not cfg.pretrain_domains:
        problems.append("pretrain_domains is empty")
    unused = [d.domain for d in cfg.datasets if d.domain and d.domain not in cfg.pretrain_domains + cfg.heldout_domains]
    if unused:
        problems.append(f"datasets {', '.join(unused)} are in neither pretrain_domains nor heldout_domains")
    if cfg.train_steps > 0 and not cfg.heldout_domains:
        problems.append("train_steps > 0 evaluates on the held-out domains, but heldout_domains is empty")
    if cfg.head_recency not in HEAD_RECENCY:
        problems.append(f"head_recency: {cfg.head_recency!r} is not {' | '.join(HEAD_RECENCY)}")
    if problems:
        raise PipelineError("the pipeline config cannot run:\n  " + "\n  ".join(problems))
    return sources


# --------------------------------------------------------------------------------------------------- stamps


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def file_fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


RUN_FOLDER = "<out>"   # how stamps write the run folder, so that they stay true when it is copied or moved


class Stages:
    """The stamps under ``<out>/stages``: which stage is done, from what, in how long."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / STAGES_DIR
        self.seconds: dict[str, float] = {}

    def _read(self, path: Path) -> dict | None:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def in_run(self, value, folder: str = RUN_FOLDER):
        """``value`` (a path, an option string ``key=PATH``, or a dict or list of them) with every path inside the
        run folder written relative to it, as ``<out>/...`` (or under ``folder``); anything else unchanged."""
        if isinstance(value, dict):
            return {k: self.in_run(v, folder) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.in_run(v, folder) for v in value]
        if not isinstance(value, (str, Path)):
            return value
        text, root = str(value), str(self.out)
        key, eq, rest = text.partition("=")
        for head, path in (("", text), (key + eq, rest)):
            if path == root or path.startswith(root + "/"):
                return head + folder + path[len(root):]
        return text

    def _made_in(self, stamp: dict, outputs: list[Path]) -> str:
        """How ``stamp`` wrote the run folder: ``<out>``; or, in stamps written before paths were run-relative,
        which recorded them as given, the folder its first output then lay in (the run folder, wherever it was)."""
        recorded = (stamp.get("outputs") or [RUN_FOLDER])[0]
        if recorded.startswith(RUN_FOLDER) or not outputs:
            return RUN_FOLDER
        inside = outputs[0].relative_to(self.out).as_posix()
        return recorded[:-len(inside) - 1] if recorded.endswith("/" + inside) else str(self.out)

    def _path(self, recorded: str) -> Path:
        """A path a stamp recorded: inside the run folder when written as ``<out>/...`` (else as it was written, by
        runs that recorded the paths as given)."""
        if recorded == RUN_FOLDER or recorded.startswith(RUN_FOLDER + "/"):
            return self.out / recorded[len(RUN_FOLDER) + 1:]
        return Path(recorded)

    def run(self, name: str, parts: tuple, outputs: list[Path], work, files: dict[str, str] | None = None) -> str:
        """Run ``work()`` unless stage ``name`` is stamped with the fingerprint of ``parts`` (what it is made
        from) and ``files`` (``{name: SHA-256}`` of the files outside the run folder it reads: a dataset's); clear
        ``outputs`` first when they were made (or started) from another one. Returns the fingerprint, for the
        stages that read this one.

        A stamp without ``files``, written before the runner hashed a dataset's files, holds when ``parts`` match
        (an upgrade ingests nothing again); it is then rewritten with today's files, so that the next edit of one
        of them counts."""
        extra = {} if files is None else {"files": files}
        fp = fingerprint(*self.in_run(parts), *extra.values())

        def matches(stamp: dict | None) -> bool:
            # a stamp of paths as given (written before they were run-relative) is read with the run folder it
            # was made in; its fingerprint is then also what the later stages' stamps were made from
            hashed = [files] if "files" in (stamp or {}) else []
            return bool(stamp) and stamp["fingerprint"] == fingerprint(
                *self.in_run(parts, self._made_in(stamp, outputs)), *hashed)

        done = self._read(self.dir / f"{name}.json")
        recorded = self.in_run([p.as_posix() for p in outputs])
        if matches(done):
            self.seconds[name] = done["seconds"]
            print(f"[{name}] up to date ({done['seconds']:.1f} s when it ran)", flush=True)
            if extra and "files" not in done:
                self._stamp(name, {"fingerprint": fp, "seconds": done["seconds"], "outputs": recorded, **extra})
                return fp
            return done["fingerprint"]
        before = (done or {}).get("files")
        changed = [] if None in (files, before) else sorted(n for n in before | files if before.get(n) != files.get(n))
        if changed:
            print(f"[{name}] changed since it ran: {', '.join(changed)}", flush=True)
        started = self._read(self.dir / f"{name}.started.json")
        if done or (started and not matches(started)):
            for p in outputs:
                remove(p)
            (self.dir / f"{name}.json").unlink(missing_ok=True)
        elif started:
            print(f"[{name}] continuing an interrupted run", flush=True)
        atomic_write_text(self.dir / f"{name}.started.json",
                          json.dumps({"fingerprint": fp, "outputs": recorded, **extra}) + "\n")
        t0 = time.perf_counter()
        work()
        self.seconds[name] = time.perf_counter() - t0
        self._stamp(name, {"fingerprint": fp, "seconds": round(self.seconds[name], 2), "outputs": recorded, **extra})
        return fp

    def _stamp(self, name: str, stamp: dict) -> None:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(stamp, indent=2) + "\n")

    def owned_outputs(self) -> list[Path]:
        """Every output a stamp or a start marker names that lies inside the run folder: what ``--fresh`` may
        delete (a copied folder's old stamps may name the original's files, which stay)."""
        paths = []
        for stamp in sorted(self.dir.glob("*.json")) if self.dir.exists() else []:
            if stamp.name == HASH_CACHE:
                continue
            paths += [self._path(p) for p in json.loads(stamp.read_text(encoding="utf-8")).get("outputs", [])]
        root = self.out.resolve()
        return [p for p in paths if p.resolve().is_relative_to(root)]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def fresh_start(cfg: PipelineConfig) -> list[Path]:
    """Delete what earlier runs of the runner wrote under ``cfg.out`` (nothing else); returns what was deleted:
    every output its stamps name, and the paths only the runner writes (for runs older than the stamps)."""
    out = Path(cfg.out)
    stages = Stages(out)
    run_dir = out / "run"
    fixed = [out / n for n in ("embeddings", "tokenizer", "tokenizer.partial", "codes.parquet", "eval", "summary",
                               "summary.json", CONFIG_FILE)]
    fixed += [out / "shards" / cfg.shards_name, *(out / "shards" / f"finetune-{d}" for d in cfg.heldout_domains[:1]),
              *(run_dir / n for n in ("checkpoints", "hf", "logs", "finetune"))]
    gone = [p for p in dict.fromkeys(stages.owned_outputs() + fixed) if p.exists()]
    for p in gone:
        remove(p)
    remove(stages.dir)
    return gone


# --------------------------------------------------------------------------------------------------- stages


def stage_start(label: str) -> float:
    """Print a stage's banner; returns its start time for :func:`stage_done`."""
    print(f"\n=== {label} ===", flush=True)
    return time.perf_counter()


def _stage(i: int, name: str) -> float:
    return stage_start(f"{i}/{N_STAGES} {name}")


def stage_done(t0: float, what: str) -> None:
    print(f"--- {what} ({time.perf_counter() - t0:.1f} s)", flush=True)


def run_command(*args: str) -> None:
    """Run a ``recbase`` sub-command in its own process, as a user would: DeepSpeed keeps process-wide state
    (process groups, communication backends) that does not survive a second engine in the same interpreter, so
    pretraining and fine-tuning each get a fresh one."""
    proc = subprocess.run([sys.executable, "-m", "recbase.cli", *args])
    if proc.returncode:
        raise RuntimeError(f"recbase {args[0]} failed with exit status {proc.returncode} (its output is above)")


def _reader(d: DatasetConfig) -> tuple[str, dict]:
    """The reader format of dataset ``d`` and its options (a preset's, or the entry's own)."""
    from recbase.data.presets import load_preset, reader_options

    fmt, options = d.format, {}
    if d.preset:
        fmt, options = reader_options(load_preset(d.preset), d.kind or None)
    elif d.kind:
        options["kind"] = d.kind
    if fmt == "generic" and not d.preset:
        from recbase.config import from_dict
        from recbase.data.readers.generic import GenericSpec

        options["spec"] = from_dict(GenericSpec, d.spec, f"dataset {d.domain}.spec")
    return fmt, options


def _ingest_dataset(d: DatasetConfig, fmt: str, options: dict, data: Path) -> None:
    from recbase.data.ingest import ingest

    summary = ingest(fmt, d.path, data, domain=d.domain, min_user_interactions=d.min_user_interactions,
                     max_history=d.max_history, interacted_items_only=d.interacted_items_only, **options)
    print(summary.format(), flush=True)


def _tables(cfg: PipelineConfig, sources: dict[str, str], stages: Stages, data: Path) -> dict[str, str]:
    """Stage 1: every domain's tables; returns each domain's fingerprint (its tables' content). A dataset's ingest
    is known by its entry in the config and the content of the files it reads, so an edited or replaced file
    ingests again (and the stages after it run again only if the tables changed)."""
    from recbase.data.dataset_files import dataset_hashes
    from recbase.data.synthetic import generate_world
    from recbase.data.tables import INTERACTIONS_FILE, ITEMS_FILE

    datasets = {d.domain: d for d in cfg.datasets}
    fps = {}
    for name in cfg.pretrain_domains + cfg.heldout_domains:
        source = sources[name]
        if source == "dataset":
            d = datasets[name]
            fmt, options = _reader(d)
            files = dataset_hashes(fmt, d.path, options, stages.dir / HASH_CACHE)
            stages.run(f"tables-{name}", (to_dict(d),), [data / name],
                       lambda d=d, fmt=fmt, options=options: _ingest_dataset(d, fmt, options, data), files)
        elif source == "world":
            params = {"seed": cfg.seed, "items_per_domain": cfg.items_per_domain,
                      "users_per_domain": cfg.users_per_domain}

            def generate(name=name, params=params):
                for s in generate_world(data, domains=[name], **params):
                    print(s.format(), flush=True)

            stages.run(f"tables-{name}", ("world", name, params), [data / name], generate)
        else:
            print(f"[{name}] tables provided in {data / name}", flush=True)
        fps[name] = file_fingerprint(data / name / ITEMS_FILE, data / name / INTERACTIONS_FILE)
    return fps


def _embeddings(cfg: PipelineConfig, stages: Stages, table_fps: dict[str, str], data: Path,
                emb: Path) -> dict[str, str]:
    """Stage 2: one stage per domain, so adding a domain to a run embeds only that domain."""
    from recbase.tokenizer.embed import PARTS_DIR, embed_domain, make_embedder

    embedder = None
    fps = {}
    for name in cfg.pretrain_domains + cfg.heldout_domains:
        def work(name=name):
            nonlocal embedder
            embedder = embedder or make_embedder(cfg.embedder, cfg.embed_batch_size)
            s = embed_domain(data / name, emb, embedder)
            state = "up to date" if s["skipped"] else f"embedded {s['embedded']:,} items"
            print(f"[{name}] {s['n_items']:,} x {s['dim']} ({s['model']}): {state}", flush=True)

        outputs = [emb / f"{name}.npy", emb / f"{name}.json", emb / PARTS_DIR / name]
        fps[name] = stages.run(f"embed-{name}", (cfg.embedder, table_fps[name]), outputs, work)
    return fps


def _train_tokenizer(tcfg, data: Path, emb: Path, tok_dir: Path, domains: list[str]) -> None:
    """Train into a side folder and rename it, so ``tok_dir`` is either a whole artifact or absent."""
    from recbase.tokenizer.train import train_from_folders

    partial = tok_dir.with_name(tok_dir.name + ".partial")
    remove(partial)
    train_from_folders(tcfg, data, emb, partial, domains)
    remove(tok_dir)
    partial.rename(tok_dir)


def run_pipeline(cfg: PipelineConfig, fresh: bool = False) -> dict:
    """Run every stage the config asks for; returns the per-domain summary (and the evaluation results when the
    model stages ran)."""
    from recbase.config import load_config, save_config
    from recbase.data.evalsets import EvalSetConfig
    from recbase.data.shards import ShardConfig, build_shards
    from recbase.tokenizer.artifact import load_tokenizer
    from recbase.tokenizer.encode import write_codes
    from recbase.tokenizer.train import TokenizerConfig
    from recbase.train.config import CONFIG_DIR

    out = Path(cfg.out)
    sources = check_config(cfg)
    if fresh and out.exists():
        for p in fresh_start(cfg):
            print(f"removed {p}")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    stages = Stages(out)
    data, emb, tok_dir = out / "data", out / "embeddings", out / "tokenizer"
    codes, shards_root, run_dir = out / "codes.parquet", out / "shards", out / "run"
    domains = cfg.pretrain_domains + cfg.heldout_domains
    t_start = time.perf_counter()

    t0 = _stage(1, "tables")
    table_fps = _tables(cfg, sources, stages, data)
    stage_done(t0, f"tables in {data}")

    t0 = _stage(2, "text embeddings")
    emb_fps = _embeddings(cfg, stages, table_fps, data, emb)
    stage_done(t0, f"embeddings in {emb}")

    t0 = _stage(3, f"item tokenizer (trained on {', '.join(cfg.pretrain_domains)})")
    tcfg = load_config(TokenizerConfig, cfg.tokenizer_config,
                       [f"codebook_size={cfg.codebook_size}", f"seed={cfg.seed}", *cfg.tokenizer_overrides],
                       [CONFIG_DIR])
    tok_fp = stages.run("tokenizer", (to_dict(tcfg), {d: emb_fps[d] for d in cfg.pretrain_domains}),
                        [tok_dir],
                        lambda: _train_tokenizer(tcfg, data, emb, tok_dir, cfg.pretrain_domains))
    tok = load_tokenizer(tok_dir)
    codes_fp = stages.run("codes", (tok_fp, emb_fps), [codes],
                          lambda: write_codes(tok, data, emb, codes, domains))
    stage_done(t0, f"tokenizer {tok.hash[:12]} ({tok.kind}, {tok.levels} x {tok.codebook_size}), codes in {codes}")

    t0 = _stage(4, "shards and eval sets")
    scfg = ShardConfig(data_dir=str(data), domains=cfg.pretrain_domains, heldout_domains=cfg.heldout_domains,
                       codes_path=str(codes), out_dir=str(shards_root), name=cfg.shards_name, seed=cfg.seed,
                       tokens_per_shard=cfg.tokens_per_shard, workers=cfg.shard_workers,
                       eval=EvalSetConfig(positives=1, negatives_per_positive=cfg.eval_negatives,
                                          max_pairs=cfg.eval_max_pairs))
    shard_dir = shards_root / cfg.shards_name
    shards_fp = stages.run("shards", (to_dict(scfg) | {"workers": 0}, codes_fp, table_fps), [shard_dir],
                           lambda: build_shards(scfg))
    stage_done(t0, f"shards in {shard_dir}")

    from recbase.corpus_summary import domain_summary, write_summary

    summary = domain_summary(data, codes, shard_dir, cfg.pretrain_domains, cfg.heldout_domains)
    results = None
    if cfg.train_steps > 0:
        results = _model_stages(cfg, stages, emb_fps, shards_fp, shard_dir, data, emb, codes, tok_dir, shards_root,
                                run_dir)
    else:
        for i, name in ((5, "pretraining"), (6, "fine-tuning"), (7, "evaluation")):
            _stage(i, f"{name}: not asked for (train_steps=0)")

    _stage(8, "summary")
    stage_seconds = dict(stages.seconds)
    paths = write_summary(summary, stage_seconds, out / "summary")
    print((out / "summary" / "summary.md").read_text(encoding="utf-8"))
    if results is not None:
        from recbase.eval.report import compact_table

        print(compact_table(results))
        print(f"(every metric, baseline and the retrieval table: {out / 'eval' / 'report.md'})")
    print(f"pipeline finished in {time.perf_counter() - t_start:.0f} s; everything is under {out}/ "
          f"(summary: {', '.join(p.name for p in paths)})")
    record = {"seconds": time.perf_counter() - t_start, "stages": stage_seconds, "domains": summary,
              "overall": (results or {}).get("overall")}
    atomic_write_text(out / "summary.json", json.dumps(record, indent=2) + "\n")
    return record


def recency_domains(cfg: PipelineConfig, data: Path) -> list[str]:
    """The pretraining domains the head's recency biases are fitted on: those an ingest read from dataset files (a
    dataset of the config, or tables ``recbase ingest`` wrote into ``<out>/data``; both leave the ingest's summary),
    never the demo world's generated ones, whose fit transfers worse to held-out real domains (docs/evaluation.md,
    "The head with its recency fitted listwise") — also when another run generated them into a data folder this
    one shares, where they count as tables provided."""
    from recbase.data.tables import ingested

    return [d for d in cfg.pretrain_domains if ingested(data / d)]


def _head_recency(cfg: PipelineConfig, model, stages: Stages, emb_fps: dict[str, str], data: Path, emb: Path,
                  run_dir: Path) -> tuple[list[str], str]:
    """With ``head_recency=real`` and an attention head: the stage that fits its recency biases on
    :func:`recency_domains` (``recbase head-recency`` with the run's seed and its default steps), and the pretraining
    option that keeps the head's biases there. Returns that option (or none: the head then learns its biases, as
    it does with ``head_recency=learned``) and the stage's fingerprint (or ""). ``model``: the pretraining's model
    config."""
    if cfg.head_recency == "learned" or not cfg.embedding_head:
        return [], ""
    domains = recency_domains(cfg, data)
    if model.embedding_head_recency:
        why = f"from {model.embedding_head_recency} (train_overrides)"
    elif model.embedding_head_kind != "attention":
        why = f"learned: the fit is the attention head's, this run's head is {model.embedding_head_kind}"
    elif not domains:
        why = "learned: no pretraining domain comes from a dataset file (the demo world's are generated)"
    else:
        from recbase.train.head_recency import STEPS, fit_domains

        path = run_dir / RECENCY_FILE
        fp = stages.run("head-recency", (domains, {d: emb_fps[d] for d in domains}, cfg.seed, STEPS), [path],
                        lambda: print(fit_domains(data, emb, domains, path, cfg.seed, STEPS), flush=True))
        return [f"model.embedding_head_recency={path}"], fp
    print(f"[head-recency] recency biases {why}", flush=True)
    return [], ""


def _model_stages(cfg: PipelineConfig, stages: Stages, emb_fps: dict[str, str], shards_fp: str, shard_dir: Path,
                  data: Path, emb: Path, codes: Path, tok_dir: Path, shards_root: Path, run_dir: Path) -> dict:
    """Stages 5-7: pretraining (its head's recency biases from :func:`_head_recency`), fine-tuning on the first
    held-out domain, zero-shot evaluation."""
    import torch

    from recbase.config import load_config
    from recbase.data.shards import ShardConfig, build_shards
    from recbase.eval.job import EvalConfig, evaluate
    from recbase.eval.report import read_metrics
    from recbase.train.config import CONFIG_DIR, TrainConfig

    train = load_config(TrainConfig, cfg.train_config, cfg.train_overrides, [CONFIG_DIR])
    device = "GPU" if torch.cuda.is_available() else "CPU"
    t0 = _stage(5, f"pretraining ({cfg.train_config}, DeepSpeed ZeRO-{train.deepspeed.zero_stage}, {device})")
    hf_dir = run_dir / "hf"
    recency_args, recency_fp = _head_recency(cfg, train.model, stages, emb_fps, data, emb, run_dir)
    pretrain_args = ["--config", cfg.train_config, f"data.shards={shard_dir}", f"seed={cfg.seed}",
                     f"optim.max_steps={cfg.train_steps}", f"checkpoint.dir={run_dir / 'checkpoints'}",
                     f"checkpoint.export_dir={hf_dir}", f"logging.dir={run_dir / 'logs'}",
                     *([f"model.embedding_head={tok_dir}"] if cfg.embedding_head else []),
                     *([f"model.text_inputs={tok_dir}"] if cfg.text_inputs else []), *recency_args,
                     *cfg.train_overrides]
    # a run whose head learns its biases keeps the parts (and so the stamp) it had before the fit existed
    model_fp = stages.run("pretrain", (pretrain_args, shards_fp, *([recency_fp] if recency_fp else [])),
                          [run_dir / "checkpoints", hf_dir, run_dir / "logs"],
                          lambda: run_command("pretrain", *pretrain_args))
    stage_done(t0, f"model in {hf_dir}")

    models = {"zero-shot": str(hf_dir)}
    finetune_fp = ""
    if cfg.finetune_steps > 0:
        target = cfg.heldout_domains[0]
        t0 = _stage(6, f"fine-tuning on {target} (not zero-shot)")
        ft_dir = run_dir / "finetune"
        ft_cfg = ShardConfig(data_dir=str(data), domains=[target], codes_path=str(codes), out_dir=str(shards_root),
                             name=f"finetune-{target}", seed=cfg.seed)
        ft_args = ["--init", str(hf_dir), "--config", "finetune.json", f"seed={cfg.seed}",
                   f"optim.max_steps={cfg.finetune_steps}", f"checkpoint.dir={ft_dir / 'checkpoints'}",
                   f"checkpoint.export_dir={ft_dir / 'hf'}", f"logging.dir={ft_dir / 'logs'}"]

        def finetune():
            # the domain's own training shards: each user's last two items stay out, as in every shard set, so
            # the eval positives (the last item) are never trained on
            ft_shards = build_shards(ft_cfg)
            run_command("finetune", *ft_args, f"data.shards={ft_shards}")

        finetune_fp = stages.run("finetune", (ft_args, to_dict(ft_cfg), model_fp),
                                 [shards_root / ft_cfg.name, ft_dir], finetune)
        models[f"fine-tuned on {target}"] = str(ft_dir / "hf")
        stage_done(t0, f"model in {ft_dir / 'hf'}")
    else:
        _stage(6, "fine-tuning: not asked for (finetune_steps=0)")

    t0 = _stage(7, f"evaluation on {', '.join(cfg.heldout_domains)}")
    ecfg = EvalConfig(models=models, eval_dir=str(shard_dir / "eval"), domains=cfg.heldout_domains,
                      out_dir=str(run_dir.parent / "eval"), data_dir=str(data), embeddings_dir=str(emb),
                      codes=str(codes), tokenizer_dir=str(tok_dir), seed=cfg.seed)
    stages.run("evaluate", (to_dict(ecfg), model_fp, finetune_fp, shards_fp), [Path(ecfg.out_dir)],
               lambda: evaluate(ecfg))
    stage_done(t0, f"report in {ecfg.out_dir}")
    return read_metrics(ecfg.out_dir)


def load_pipeline_config(path: str | None, overrides: list[str]) -> PipelineConfig:
    """A config file (bare names also looked up in launch/configs) with ``key=value`` overrides."""
    from recbase.config import load_config
    from recbase.train.config import CONFIG_DIR

    return load_config(PipelineConfig, path, overrides, [CONFIG_DIR])
