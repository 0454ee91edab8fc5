"""One command for a fresh GPU machine: correctness, kernels, pretraining and evaluation in one JSON + one table.

    python launch/bench/gpu_suite.py --out DIR               # one H100/H200: at most --budget-s (450 s) of work
    python launch/bench/gpu_suite.py --out DIR --cpu-smoke   # the same code paths at tiny shapes on CPU

Sections (the suite stops starting sections when its time budget is spent, and says so; they run in priority
order: correctness, RQ search, the 0.3B model with the default attention and ZeRO-3, evaluation, then the other
attention backends, the 1.5B model and the other ZeRO stages):

- ``correctness``: the ``gpu``-marked tests (Triton RQ search and fused linear + CE against their references at
  the paper's sizes, bf16 fast scoring against float32, FlexAttention / FA2 packed gradients against one user at
  a time), through pytest;
- ``rq_search``: N=1M, D=256, K=2048, L=4: the Triton kernel against ``torch.cdist`` + argmin and against the
  PyTorch reference, ms, TFLOP/s, GB/s and the share of rows with identical codes;
- ``pretrain-*``: the 0.3B preset, bf16, packed rows of synthetic users, one GPU, for each attention backend
  (FlexAttention, SDPA with the dense mask, FA2 when ``flash_attn`` imports) and ZeRO-3/2/1: tokens/s, MFU, peak
  memory; the 1.5B preset with ZeRO-3 for a few steps;
- ``evaluation``: 20,000 (user, candidate) pairs scored by the 0.3B model in bf16 fast mode, seconds, beside the
  naive one-forward-per-pair scorer on a slice; catalog retrieval users/s, beside one user per call.

Every section runs in its own process with its own time limit: a section that fails or hangs records its error and
the suite goes on, and the memory of one section is freed before the next. The shards are synthetic users of
realistic shape (``recbase.data.synthetic_shards``), written here, so nothing but the code and the wheels of
``launch/bench/gpu_wheels.sh`` needs to reach the machine. Results: ``DIR/gpu_suite.json`` and
``DIR/gpu_suite.md``; each section's log under ``DIR/logs/``.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Shapes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    rq: tuple[int, int, int, int]        # N, D, K, L
    codebook_size: int                   # K of the token vocabulary (L = 4)
    users: int                           # synthetic users in the shards
    presets: dict                        # size -> (config file, overrides)
    steps: int                           # timed optimizer steps per pretraining run
    warmup: int                          # untimed steps before them
    eval_users: int                      # users scored, 2 candidates each
    naive_users: int                     # of them scored by the naive baseline too
    catalog: int                         # items in the retrieval catalog
    retrieval_users: int
    budget_s: float                      # default --budget-s
    timeouts: dict                       # section kind -> seconds
    zero_stages: tuple = (3, 2, 1)       # ZeRO stages of the 0.3B runs
    loader_workers: int = 2              # data.num_workers of the pretraining runs
    tests: tuple = ("tests/test_kernel_rq_search.py", "tests/test_kernel_fused_ce.py", "tests/test_eval_scoring.py",
                    "tests/test_train_flex.py")   # files holding the gpu-marked tests


GPU = Shapes(
    rq=(1_000_000, 256, 2048, 4), codebook_size=2048, users=12_000,
    presets={"0.3b": ("0.3b.json", ["data.seq_len=2048", "optim.micro_batch_size=16",
                                    "optim.global_batch_tokens=32768"]),
             "1.5b": ("1.5b.json", ["data.seq_len=4096", "optim.micro_batch_size=4",
                                    "optim.global_batch_tokens=16384"])},
    steps=10, warmup=3, eval_users=10_000, naive_users=100, catalog=20_000, retrieval_users=512, budget_s=450,
    timeouts={"correctness": 120, "rq_search": 90, "pretrain": 90, "pretrain-1.5b": 150, "evaluation": 120})
SMOKE = Shapes(
    rq=(256, 32, 64, 4), codebook_size=64, users=300,
    presets={"0.3b": ("tiny.json", ["data.seq_len=256", "optim.micro_batch_size=2", "optim.global_batch_tokens=512"]),
             "1.5b": ("tiny.json", ["data.seq_len=256", "optim.micro_batch_size=1", "optim.global_batch_tokens=256",
                                    "model.activation_checkpointing=true"])},
    steps=2, warmup=1, eval_users=16, naive_users=2, catalog=300, retrieval_users=4, budget_s=240,
    timeouts={"correctness": 120, "rq_search": 60, "pretrain": 90, "pretrain-1.5b": 90, "evaluation": 60},
    # the smoke run checks the code paths: one ZeRO stage (the others differ by a config value), no loader
    # workers, and one test file (on CPU every gpu-marked test skips)
    zero_stages=(3,), loader_workers=0, tests=("tests/test_kernel_fused_ce.py",))


# ------------------------------------------------------------------------------------------------ sections


def section_correctness(args, shapes: Shapes) -> dict:
    """pytest -m gpu over the files holding the gpu-marked tests; outcomes per test from the JUnit XML."""
    import xml.etree.ElementTree as ET

    junit = Path(args.out) / "logs" / "correctness-junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", f"--junitxml={junit}",
           *shapes.tests]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(done.stdout[-20000:], done.stderr[-5000:], sep="\n")
    outcomes: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kind = ("failed" if case.find("failure") is not None or case.find("error") is not None
                else "skipped" if case.find("skipped") is not None else "passed")
        outcomes[kind].append(name)
    return {"pytest_exit_code": done.returncode, **{k: sorted(v) for k, v in outcomes.items()}}


def section_rq_search(args, shapes: Shapes) -> dict:
    """Triton kernel vs torch.cdist + argmin (the baseline) and vs the PyTorch reference, same inputs."""
    from kernels.testing import enable_interpreter

    enable_interpreter()   # CPU smoke: the kernel runs under the Triton interpreter
    import torch

    from kernels.benchmarking import cdist_codes, time_call
    from kernels.rq_search import rq_search

    n, d, k, levels = shapes.rq
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, generator=g, device=device)
    codebooks = torch.randn(levels, k, d, generator=g, device=device)
    reps = 3 if device.type == "cuda" else 1
    runs = {"triton": lambda: rq_search(x, codebooks, backend="triton"),
            "cdist_argmin": lambda: cdist_codes(x, codebooks),
            "pytorch_reference": lambda: rq_search(x, codebooks, backend="pytorch")}
    flops = 2.0 * n * k * d * levels
    nbytes = 4 * (n * d + levels * k * d) + 8 * n * levels
    out: dict = {"n": n, "d": d, "k": k, "levels": levels, "dtype": "fp32", "device": device.type}
    codes = {}
    for name, fn in runs.items():
        seconds = time_call(fn, device, warmup=1, reps=reps)
        codes[name] = fn()
        out[name] = {"ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "gbps": nbytes / seconds / 1e9}
    for name in ("cdist_argmin", "pytorch_reference"):
        out[f"speedup_vs_{name}"] = out[name]["ms"] / out["triton"]["ms"]
        out[f"identical_rows_vs_{name}"] = (codes["triton"] == codes[name]).all(1).float().mean().item()
    return out


def _pretrain_overrides(args, shapes: Shapes, size: str, attention: str, stage: int, run: str) -> tuple[str, list]:
    config, shape = shapes.presets[size]
    run_dir = Path(args.out) / "runs" / run
    return config, [*shape, f"data.shards={Path(args.out) / 'shards' / 'synthetic'}",
                    f"data.num_workers={shapes.loader_workers}",
                    f"model.attention={attention}", f"deepspeed.zero_stage={stage}",
                    # FusedAdam is compiled on first use, which needs nvcc; torch's AdamW needs nothing
                    "deepspeed.optimizer=torch", "checkpoint.resume=none", f"checkpoint.dir={run_dir}/ckpt",
                    f"logging.dir={run_dir}/logs", "logging.tensorboard=false", "logging.progress=false",
                    "logging.valid_batches=0"]


def section_pretrain(args, shapes: Shapes, size: str, attention: str, stage: int) -> dict:
    """Build the trainer (DeepSpeed engine, ZeRO ``stage``) and time ``shapes.steps`` optimizer steps."""
    import torch

    from recbase.train.config import load_train_config
    from recbase.train.engine import shutdown
    from recbase.train.loop import Trainer
    from recbase.train.throughput import measure_steps

    config, overrides = _pretrain_overrides(args, shapes, size, attention, stage, f"{size}-{attention}-z{stage}")
    start = time.perf_counter()
    trainer = Trainer(load_train_config(config, overrides))
    build_s = time.perf_counter() - start
    try:
        result = measure_steps(trainer, shapes.steps, shapes.warmup)
    finally:
        shutdown()
    cfg = trainer.cfg
    return {"config": config, "overrides": overrides, "attention": trainer.engine.module.attention,
            "zero_stage": stage, "dtype": "bf16" if trainer.ds_config.get("bf16") else "fp32",
            "parameters": trainer.size.parameters, "seq_len": cfg.data.seq_len,
            "micro_batch_size": cfg.optim.micro_batch_size, "gradient_accumulation": trainer.gas,
            "peak_tflops": trainer.peak / 1e12 if trainer.peak else None, "build_s": build_s,
            "steps": shapes.steps, "warmup": shapes.warmup,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", **result}


def section_evaluation(args, shapes: Shapes) -> dict:
    """The 0.3B model (random weights: speed does not depend on them) scoring 2 candidates per user, bf16 fast
    mode, and retrieving from a catalog with the trie-constrained beam search."""
    import numpy as np
    import torch

    from recbase.data.synthetic_shards import synthetic_sequences
    from recbase.eval.retrieval import Retriever
    from recbase.eval.scoring import CandidateScorer
    from recbase.eval.trie import CodeTrie
    from recbase.train.config import load_train_config
    from recbase.train.model import build_model, qwen2_config
    from recbase.vocab import Vocab

    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    config, _ = shapes.presets["0.3b"]
    vocab = Vocab(levels=4, codebook_size=shapes.codebook_size)
    model_cfg = load_train_config(config).model
    model = build_model(qwen2_config(model_cfg, vocab.model_vocab_size, "sdpa", vocab.pad_id), seed=0)
    model = model.to(device, dtype).eval()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # histories: synthetic users (median 20 items); candidates: 2 random catalog items per user
    seqs = synthetic_sequences(vocab, shapes.eval_users, n_items=shapes.catalog, median_items=20, max_items=200,
                               seed=1)
    histories = [np.r_[vocab.bos_id, seqs.item_tokens[s:s + c].reshape(-1)]
                 for s, c in zip(seqs.starts.tolist(), seqs.counts.tolist())]
    rng = np.random.default_rng(2)
    catalog_codes = rng.integers(0, vocab.codebook_size, size=(shapes.catalog, vocab.levels))
    catalog_tokens = vocab.encode_codes(catalog_codes)
    candidates = [catalog_tokens[rng.integers(0, shapes.catalog, size=2)] for _ in histories]
    out: dict = {"model": config, "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype),
                 "users": len(histories), "pairs": 2 * len(histories),
                 "history_tokens_mean": float(np.mean([len(h) for h in histories]))}
    batch_tokens = 65536 if cuda else 4096
    with torch.no_grad():
        for mode, users, kwargs in (("naive", shapes.naive_users, {}),
                                    ("fast", len(histories), {"batch_tokens": batch_tokens})):
            scorer = CandidateScorer(model, vocab.levels, vocab.bos_id, mode, pad_id=vocab.pad_id, **kwargs)
            scorer.score_users(histories[:2], candidates[:2])   # warm-up
            sync()
            start = time.perf_counter()
            scores = scorer.score_users(histories[:users], candidates[:users])
            sync()
            seconds = time.perf_counter() - start
            out[f"scoring_{mode}"] = {"pairs": 2 * users, "seconds": seconds, "pairs_per_s": 2 * users / seconds,
                                      **kwargs}
            if mode == "naive":
                naive_scores = scores
        out["fast_vs_naive_max_abs_diff"] = max(float(np.abs(a.sum(1) - b.sum(1)).max())
                                                for a, b in zip(scores, naive_scores))
        out["speedup_fast_vs_naive"] = out["scoring_fast"]["pairs_per_s"] / out["scoring_naive"]["pairs_per_s"]

        trie = CodeTrie.build(catalog_codes, [f"i{j}" for j in range(shapes.catalog)], vocab.codebook_size, device)
        users = histories[:shapes.retrieval_users]
        for name, batch_users, subset in (("single", 1, users[:8]), ("batched", 64, users)):
            r = Retriever(model, trie, vocab.n_special, vocab.bos_id, beam_width=20, batch_users=batch_users,
                          batch_tokens=batch_tokens, pad_id=vocab.pad_id)
            search = (lambda hs: [r.retrieve(h) for h in hs]) if name == "single" else r.retrieve_batch
            search(subset[:batch_users])   # warm-up
            sync()
            start = time.perf_counter()
            search(subset)
            sync()
            seconds = time.perf_counter() - start
            out[f"retrieval_{name}"] = {"users": len(subset), "batch_users": batch_users, "seconds": seconds,
                                        "users_per_s": len(subset) / seconds, "beam_width": 20,
                                        "catalog": shapes.catalog}
        out["speedup_retrieval_batched_vs_single"] = (out["retrieval_batched"]["users_per_s"]
                                                      / out["retrieval_single"]["users_per_s"])
    return out


# ------------------------------------------------------------------------------------------------ the plan


def attention_backends(smoke: bool) -> list[str]:
    """FlexAttention first (what ``auto`` picks without flash-attn), then SDPA's dense mask, then FA2 if present.
    On CPU only SDPA trains (PyTorch has no FlexAttention backward there)."""
    if smoke:
        return ["sdpa"]
    backends = ["flex_attention", "sdpa"]
    if importlib.util.find_spec("flash_attn") is not None:
        backends.append("flash_attention_2")
    return backends


def plan(smoke: bool, shapes: Shapes) -> list[tuple[str, str, dict]]:
    """(section name, timeout kind, arguments) in priority order: what matters most runs first."""
    backends = attention_backends(smoke)

    def pretrain(size: str, attention: str, stage: int) -> tuple[str, str, dict]:
        kind = "pretrain-1.5b" if size == "1.5b" else "pretrain"
        return f"pretrain-{size}-{attention}-z{stage}", kind, {"size": size, "attention": attention, "stage": stage}

    return [("correctness", "correctness", {}), ("rq_search", "rq_search", {}), pretrain("0.3b", backends[0], 3),
            ("evaluation", "evaluation", {}), *(pretrain("0.3b", a, 3) for a in backends[1:]),
            pretrain("1.5b", backends[0], 3),
            *(pretrain("0.3b", a, s) for s in shapes.zero_stages if s != 3 for a in backends)]


def run_section(name: str, args, shapes: Shapes, kwargs: dict) -> dict:
    """In the child process: run one section and return its record."""
    fn = {"correctness": section_correctness, "rq_search": section_rq_search,
          "evaluation": section_evaluation}.get(name.split("-")[0], section_pretrain)
    return fn(args, shapes, **kwargs)


def host_info() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()})"}
    for package in ("triton", "transformers", "deepspeed", "webdataset", "flash_attn"):
        try:
            info[package] = importlib.import_module(package).__version__
        except Exception as e:   # noqa: BLE001 - a missing package is a finding, not a failure of the suite
            info[package] = f"missing ({type(e).__name__})"
    return info


def make_shards(out: Path, shapes: Shapes) -> dict:
    from recbase.data.shard_format import read_manifest
    from recbase.data.synthetic_shards import write_synthetic_shards
    from recbase.vocab import Vocab

    start = time.perf_counter()
    shutil.rmtree(out / "shards", ignore_errors=True)   # a rerun into DIR may use other shapes: never mix them
    root = write_synthetic_shards(out / "shards", "synthetic", Vocab(levels=4, codebook_size=shapes.codebook_size),
                                  n_users=shapes.users)
    return {"path": str(root), "seconds": time.perf_counter() - start, "totals": read_manifest(root)["totals"]}


def main_parent(args) -> int:
    shapes = SMOKE if args.cpu_smoke else GPU
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "sections").mkdir(exist_ok=True)
    budget = args.budget_s or shapes.budget_s
    t0 = time.perf_counter()
    report = {"suite": "gpu_suite", "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python launch/bench/gpu_suite.py " + " ".join(sys.argv[1:]), "budget_s": budget,
              "host": host_info(), "shards": make_shards(out, shapes), "sections": {}}
    print(f"[gpu_suite] {report['host']['device']}; shards {report['shards']['totals']}", flush=True)
    only = set(args.only or [])
    for name, kind, kwargs in plan(args.cpu_smoke, shapes):
        if only and name not in only:
            continue
        left = budget - (time.perf_counter() - t0)
        if left < 20:
            report["sections"][name] = {"status": "not run", "error": f"the suite's {budget:.0f} s budget was spent"}
            continue
        timeout = min(shapes.timeouts[kind], left)
        record = run_child(name, args, kwargs, timeout, out)
        report["sections"][name] = record
        print(f"[gpu_suite] {name}: {record['status']} in {record['seconds']:.1f} s", flush=True)
        write_report(report, out, time.perf_counter() - t0)
    write_report(report, out, time.perf_counter() - t0)
    print(f"[gpu_suite] wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")
    return 0


def run_child(name: str, args, kwargs: dict, timeout: float, out: Path) -> dict:
    result_file = out / "sections" / f"{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--out", str(out), "--section", name, "--section-args", json.dumps(kwargs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.cpu_smoke:
        cmd.append("--cpu-smoke")
        env["OMP_NUM_THREADS"] = "1"   # tiny models: a second intra-op thread only adds spin-waiting
    start = time.perf_counter()
    with open(out / "logs" / f"{name}.log", "w") as log:
        # its own process group, so a timeout also ends what it started (loader workers, pytest)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            status = None if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    if result_file.exists():
        record = json.loads(result_file.read_text())
        if status and record["status"] == "ok":
            record.update(status="error", error=status)
    else:
        tail = (out / "logs" / f"{name}.log").read_text(errors="replace")[-1500:]
        record = {"status": "error", "error": f"{status or 'no result written'}; log tail:\n{tail}"}
    record["seconds"] = seconds
    return record


def main_child(args) -> int:
    shapes = SMOKE if args.cpu_smoke else GPU
    record: dict
    try:
        record = {"status": "ok", "result": run_section(args.section, args, shapes, json.loads(args.section_args))}
    except Exception as e:   # noqa: BLE001 - recorded in the report; the parent goes on with the next section
        traceback.print_exc()
        record = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    path = Path(args.out) / "sections" / f"{args.section}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    sys.stdout.flush()
    # a DeepSpeed process group or loader workers must not keep a finished section alive
    os._exit(0 if record["status"] == "ok" else 1)


# ------------------------------------------------------------------------------------------------ the report


def _fmt(x, spec=",.0f"):
    return "n/a" if x is None else format(x, spec)


def summary_line(name: str, record: dict) -> str:
    """One Markdown cell of what a section measured."""
    if record["status"] != "ok":
        return f"**{record['status']}**: " + record.get("error", "").splitlines()[0][:300]
    r = record["result"]
    if name == "correctness":
        failed = ", ".join(r["failed"]) or "none"
        return f"{len(r['passed'])} passed, {len(r['failed'])} failed ({failed}), {len(r['skipped'])} skipped"
    if name == "rq_search":
        return (f"N={r['n']:,} D={r['d']} K={r['k']} L={r['levels']} fp32: Triton {r['triton']['ms']:.1f} ms "
                f"({r['triton']['tflops']:.1f} TFLOP/s, {r['triton']['gbps']:.1f} GB/s); torch.cdist+argmin "
                f"{r['cdist_argmin']['ms']:.1f} ms (Triton {r['speedup_vs_cdist_argmin']:.2f}x), PyTorch reference "
                f"{r['pytorch_reference']['ms']:.1f} ms ({r['speedup_vs_pytorch_reference']:.2f}x); identical codes: "
                f"{r['identical_rows_vs_pytorch_reference']:.4%} of rows vs the reference, "
                f"{r['identical_rows_vs_cdist_argmin']:.4%} vs cdist")
    if name.startswith("pretrain"):
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f} GiB"
        return (f"{r['parameters'] / 1e6:,.1f}M params, {r['dtype']}, {r['attention']}, ZeRO-{r['zero_stage']}, "
                f"{r['micro_batch_size']}x{r['seq_len']} tokens/step: {_fmt(r['tokens_per_s'])} tokens/s "
                f"({_fmt(r['label_tokens_per_s'])} label tokens/s), MFU {mfu}, peak memory {mem}, "
                f"{r['s_per_step']:.3f} s/step, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} over "
                f"{r['warmup'] + r['steps']} steps (build {r['build_s']:.0f} s)")
    if name == "evaluation":
        f, n = r["scoring_fast"], r["scoring_naive"]
        rb, rs = r["retrieval_batched"], r["retrieval_single"]
        return (f"{r['parameters'] / 1e6:,.1f}M params, {r['dtype']}: {f['pairs']:,} pairs in {f['seconds']:.2f} s "
                f"({_fmt(f['pairs_per_s'])} pairs/s, fast); naive on {n['pairs']} pairs: {_fmt(n['pairs_per_s'])} "
                f"pairs/s ({r['speedup_fast_vs_naive']:.1f}x); max |fast - naive| log P "
                f"{r['fast_vs_naive_max_abs_diff']:.2e}; "
                f"retrieval (catalog {rb['catalog']:,}, beam 20): {rb['users_per_s']:,.1f} users/s batched "
                f"({rb['batch_users']} per forward) vs {rs['users_per_s']:,.1f} one per call "
                f"({r['speedup_retrieval_batched_vs_single']:.1f}x)")
    return json.dumps(r)[:300]


def write_report(report: dict, out: Path, elapsed: float) -> None:
    report = {**report, "elapsed_s": elapsed}
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    host = report["host"]
    lines = [f"# GPU suite, {report['date']} ({report['mode']})", "",
             f"Device: {host['device']}; torch {host['torch']}, triton {host['triton']}, transformers "
             f"{host['transformers']}, deepspeed {host['deepspeed']}, flash_attn {host['flash_attn']}; Python "
             f"{host['python']}, {host['cpus']} CPUs. Command: `{report['command']}`. Wall time {elapsed:.0f} s of a "
             f"{report['budget_s']:.0f} s budget.", "",
             "| section | status | s | result |", "|---|---|---|---|"]
    for name, record in report["sections"].items():
        cell = summary_line(name, record).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', 0):.0f} | {cell} |")
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the report, logs, shards and runs")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: the same code paths")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting sections after this many seconds")
    p.add_argument("--only", nargs="*", help="run only these sections (names as in the report)")
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--section-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    return main_child(args) if args.section else main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
