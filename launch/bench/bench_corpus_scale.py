"""Peak memory and wall time of the corpus pipeline (ingest → embed → tokenizer → codes → shards) at N× the
shared corpus, against the 1× run measured in the same invocation.

The N× corpus replicates every user of the shared CSV folders N times under new ids (``<id>~r<k>``, same items,
same timestamps), so the catalogs stay the same size and the interactions grow N-fold. Each scale runs the
pipeline runner in its own process (``recbase.pipeline.run_pipeline``, hashing embedder, a small RQ-k-means
tokenizer: embedding and tokenizer work on the catalogs, which do not grow; recipes is the held-out domain, so
the last stage writes its eval set beside the shards) and reports that process's peak resident memory, the peak
of each stage (Linux: the kernel's high-water mark, reset before the stage) and the wall time of each stage.
Flat memory and linear time show as a memory ratio near 1 and a time ratio near N.

    python launch/bench/bench_corpus_scale.py --scales 1 10 30 --work /tmp/corpus-scale
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
# preset, domain: the shared folders whose files are plain CSV (items.csv/movies.csv + interactions/ratings)
FOLDERS = [("amazon-books-2014", "amazon-books"), ("amazon-health-2014", "amazon-health"),
           ("amazon-electronics-2014", "amazon-electronics"), ("food-com-recipes", "recipes"),
           ("movielens-latest-small", "movielens")]
HELDOUT = "recipes"
CODEBOOK = 16   # the catalogs are the same at every scale, so the tokenizer's cost is too: kept small
INTERACTIONS = {"movielens-latest-small": ("ratings.csv", "userId"), None: ("interactions.csv", "user_id")}


def replicate(src: Path, dst: Path, preset: str, copies: int) -> int:
    """Write ``dst`` = ``src`` with every user repeated ``copies`` times under new ids; returns the rows written."""
    dst.mkdir(parents=True, exist_ok=True)
    name, user_col = INTERACTIONS.get(preset, INTERACTIONS[None])
    for f in src.iterdir():
        if f.name != name and f.suffix == ".csv":
            shutil.copyfile(f, dst / f.name)
    rows = 0
    with open(src / name, newline="", encoding="utf-8") as fin, \
            open(dst / name, "w", newline="", encoding="utf-8") as fout:
        reader, writer = csv.reader(fin), csv.writer(fout, lineterminator="\n")
        header = next(reader)
        user = header.index(user_col)
        writer.writerow(header)
        body = list(reader)
        for k in range(copies):
            for row in body:
                row = list(row)
                if k:
                    row[user] = f"{row[user]}~r{k}"
                writer.writerow(row)
            rows += len(body)
    return rows


def _reset_peak() -> None:
    """Start a new high-water mark of resident memory (Linux >= 4.0; elsewhere the stage peaks stay 0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float:
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def child(work: Path) -> None:
    """One scale: the pipeline on ``work/src``; prints one JSON line with the stage times and peak RSS."""
    from recbase.pipeline import DatasetConfig, PipelineConfig, Stages, run_pipeline

    peaks: dict[str, float] = {}
    run_stage = Stages.run

    def measured(self, name, *args):
        peaks["outside stages"] = max(peaks.get("outside stages", 0.0), _peak_mb())
        _reset_peak()
        try:
            return run_stage(self, name, *args)
        finally:
            peaks[name] = _peak_mb()
            _reset_peak()

    Stages.run = measured
    datasets = [DatasetConfig(domain=domain, preset=preset, path=str(work / "src" / preset), min_user_interactions=5)
                for preset, domain in FOLDERS]
    cfg = PipelineConfig(out=str(work / "out"), datasets=datasets,
                         pretrain_domains=[d for _, d in FOLDERS if d != HELDOUT], heldout_domains=[HELDOUT],
                         embedder="hashing", codebook_size=CODEBOOK,
                         tokenizer_overrides=["kind=rqkmeans", "rqkmeans.iters=5"], shards_name="corpus",
                         train_steps=0)
    start = time.perf_counter()
    record = run_pipeline(cfg)
    print("RESULT " + json.dumps({"seconds": time.perf_counter() - start, "stages": record["stages"],
                                  "stage_peak_mb": peaks,
                                  "interactions": sum(r["interactions"] for r in record["domains"].values()),
                                  "train_tokens": sum(r.get("train_tokens", 0) for r in record["domains"].values()),
                                  # resetting the high-water mark resets ru_maxrss too: the whole run's peak is
                                  # the largest of the parts
                                  "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                                     *peaks.values())}))


def run_scale(scale: int, work: Path) -> dict:
    root = work / f"x{scale}"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    rows = sum(replicate(SHARED / preset, root / "src" / preset, preset, scale) for preset, _ in FOLDERS)
    prepare = time.perf_counter() - t0
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"scale {scale}: the pipeline failed (exit {proc.returncode})")
    result = json.loads(line[0][len("RESULT "):])
    shutil.rmtree(root)
    return {"scale": scale, "rows": rows, "prepare_seconds": prepare, "load": (load, os.getloadavg()[0]), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--work", type=Path, default=Path("/tmp/corpus-scale"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    scales = sorted(set(args.scales) | {1})
    print(f"# corpus scale, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# data: {', '.join(p for p, _ in FOLDERS)} from {SHARED}, users replicated N times; {HELDOUT} held out; "
          f"hashing embedder, rqkmeans 4 x {CODEBOOK}; baseline: the 1x run")
    stage_names = ["tables", "embed", "tokenizer", "codes", "shards"]
    print(f"{'scale':>5s} {'interactions':>13s} {'tokens':>13s} {'peak RSS MB':>11s} {'x 1x':>5s} {'seconds':>8s} "
          f"{'x 1x':>6s} " + " ".join(f"{s:>9s}" for s in stage_names) + "  stage peaks MB: "
          + " ".join(f"{s:>9s}" for s in stage_names) + "  load avg", flush=True)
    base = None
    for scale in scales:
        r = run_scale(scale, args.work)
        base = base or r
        per_stage = {s: sum(v for k, v in r["stages"].items() if k == s or k.startswith(s + "-")) for s in stage_names}
        peak = {s: max([v for k, v in r["stage_peak_mb"].items() if k == s or k.startswith(s + "-")] or [0])
                for s in stage_names}
        print(f"{scale:5d} {r['interactions']:13,d} {r['train_tokens']:13,d} {r['peak_rss_mb']:11,.0f} "
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:5.2f} {r['seconds']:8.1f} "
              f"{r['seconds'] / base['seconds']:6.2f} " + " ".join(f"{per_stage[s]:9.1f}" for s in stage_names)
              + "                 " + " ".join(f"{peak[s]:9,.0f}" for s in stage_names)
              + f"  {r['load'][0]:.1f} -> {r['load'][1]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
