"""Embedding throughput on real item texts: the default path of `recbase embed` against the float32 single call it
replaced, measured in the same run, with the cosine between their vectors per domain.

    python launch/bench/bench_embed.py --work /tmp/recbase-embed-bench [--items 512] [--rounds 2] [--onnx]

Ingests (once, cached under --work) MovieLens, Amazon Scientific and Amazon Electronics from ../shared/data and
embeds the first --items texts of each domain with every path below, in interleaved rounds (path A, B, ..., then
again), so that a change in the load of a shared machine hits every path alike; items/s is the median over rounds.

- today: ``SentenceTransformer.encode`` in float32, batch 64, torch's own thread count (the path before);
- then the default's levers added one at a time: batches of texts with about the same token count; those batches
  run by single-threaded worker threads, one per CPU; bfloat16 weights (the default, ``make_embedder()``);
- with --onnx (needs ``pip install -e '.[onnx]'``: onnxruntime, onnx): the default with the model exported to
  ONNX, its weights quantised to int8 (dynamic, per channel) and run by ONNX Runtime instead of bfloat16 torch.

The padding column is the share of padding tokens in batches of 64 cut from the whole catalog sorted by
characters (what ``SentenceTransformer.encode`` does) or by tokens (the default path). The token-count columns are
the evidence on a token cap: no text of these catalogs reaches the model's own cap
(``max_seq_length``), and few reach 128 tokens, so a lower cap would change vectors for almost no time.

Cosine is between the float16 vectors as stored, each path against today's; a path replaces today's only if the
mean and minimum per domain are both >= 0.99.
"""
from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from recbase.data.ingest import ingest
from recbase.data.readers.generic import load_spec
from recbase.data.tables import list_domains
from recbase.tokenizer.embed import SentenceTransformerEmbedder, make_embedder, read_texts, unit_rows

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DOMAINS = {  # domain -> (reader, folder, options)
    "movielens": ("movielens", "movielens-latest-small", {}),
    "scientific": ("recbole", "amazon-scientific", {"kind": "product"}),
    "electronics": ("generic", "amazon-electronics-2014", {"spec": load_spec(".", None, [
        "items=items.csv", "interactions=interactions.csv", "time=timestamp", "text_fields=title", "kind=product"])}),
}


def prepare(work: Path) -> Path:
    data = work / "data"
    have = {p.name for p in list_domains(data)} if data.exists() else set()
    for domain, (reader, folder, options) in DOMAINS.items():
        if domain not in have:
            ingest(reader, SHARED_DATA / folder, data, domain=domain, min_user_interactions=0, **options)
    return data


class OnnxInt8:
    """The model's transformer exported to ONNX with mean pooling, int8 weights, one single-threaded ONNX Runtime
    session per worker thread, fed the same batches by token count as the default path."""

    def __init__(self, st_model, workers: int, tmp: Path):
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        class Pooled(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
                m = attention_mask.unsqueeze(-1).to(h.dtype)
                return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

        self.tokenizer, self.max_length = st_model.tokenizer, st_model.max_seq_length
        self.dim = st_model.get_embedding_dimension()
        self.names = ["input_ids", "attention_mask", "token_type_ids"]
        example = self.tokenizer(["a b", "c"], padding=True, return_tensors="pt")
        fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
        torch.onnx.export(Pooled(st_model[0].auto_model.float()).eval(), tuple(example[n] for n in self.names),
                          str(fp32), dynamo=False, input_names=self.names, output_names=["embedding"],
                          dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in self.names},
                                        "embedding": {0: "batch"}}, opset_version=17)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.sessions = [ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
                         for _ in range(workers)]

    def encode(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        batches = [order[i:i + 64] for i in range(0, len(order), 64)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        sessions = queue.SimpleQueue()
        for session in self.sessions:
            sessions.put(session)

        def encode_batch(rows):
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="np")
            session = sessions.get()
            out[rows] = unit_rows(session.run(None, {n: batch[n].astype(np.int64) for n in self.names})[0])
            sessions.put(session)

        with ThreadPoolExecutor(len(self.sessions)) as pool:
            list(pool.map(encode_batch, batches))
        return out


def padding_share(tokens: np.ndarray, order: np.ndarray, batch_size: int = 64) -> float:
    """Padding as a share of real tokens when batches are cut from ``order``."""
    padded = sum(tokens[order[i:i + batch_size]].max() * len(order[i:i + batch_size])
                 for i in range(0, len(order), batch_size))
    return padded / tokens.sum() - 1


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = (unit_rows(x.astype(np.float16).astype(np.float32)) for x in (a, b))
    return np.sum(a * b, axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "recbase-embed-bench"),
                   help="cache folder for the ingested tables")
    p.add_argument("--items", type=int, default=512, help="texts per domain (the first ones of items.parquet)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; items/s is their median")
    p.add_argument("--onnx", action="store_true", help="also ONNX Runtime with int8 weights (needs onnxruntime, onnx)")
    args = p.parse_args()

    data = prepare(Path(args.work))
    default = make_embedder()
    today = SentenceTransformerEmbedder(precision="float32", workers=1)
    paths = {
        "today: float32, one call": lambda t: today.model.encode(t, batch_size=64, convert_to_numpy=True,
                                                                 normalize_embeddings=True, show_progress_bar=False),
        "+ batches by token count": SentenceTransformerEmbedder(precision="float32", workers=1).encode,
        f"+ {default.workers} single-threaded workers": SentenceTransformerEmbedder(precision="float32").encode,
        f"+ bfloat16 = default ({default.precision}, {default.workers} workers)": default.encode,
    }
    tmp = tempfile.TemporaryDirectory()
    if args.onnx:
        paths["ONNX Runtime int8 instead of bfloat16"] = OnnxInt8(today.model, default.workers, Path(tmp.name)).encode

    print(f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; cpu {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, bf16 units {'yes' if default.precision == 'bfloat16' else 'no'}; torch "
          f"{torch.__version__}; torch threads {torch.get_num_threads()}; load average at start "
          f"{os.getloadavg()[0]:.1f}")
    print("command: python " + " ".join(sys.argv))
    print(f"model {default.name}, batch 64, max_seq_length {default.settings['max_seq_length']}; "
          f"{args.items} items per domain, {args.rounds} interleaved rounds\n")
    print("| domain | catalog tokens p50 / p90 / p99 / max | > 128 tokens | padding, by chars / by tokens | path "
          "| items/s | × today | cosine mean | cosine min |")
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    totals = {name: 0.0 for name in paths}
    for domain in DOMAINS:
        catalog = read_texts(data / domain)[1]
        lengths = np.array([len(ids) for ids in today.model.tokenizer(catalog)["input_ids"]])   # not truncated
        texts = catalog[:args.items]
        for encode in paths.values():
            encode(texts[:16])  # warm-up, not timed
        walls, vectors = {name: [] for name in paths}, {}
        for _ in range(args.rounds):
            for name, encode in paths.items():
                start = time.perf_counter()
                vectors[name] = encode(texts)
                walls[name].append(time.perf_counter() - start)
        base = len(texts) / statistics.median(walls[next(iter(paths))])
        q = np.percentile(lengths, [50, 90, 99, 100]).astype(int)
        tokens = np.minimum(lengths, default.settings["max_seq_length"])
        by_chars = padding_share(tokens, np.argsort([-len(t) for t in catalog], kind="stable"))
        by_tokens = padding_share(tokens, np.argsort(-tokens, kind="stable"))
        for i, name in enumerate(paths):
            rate = len(texts) / statistics.median(walls[name])
            totals[name] += statistics.median(walls[name])
            c = cosine(vectors[name], vectors[next(iter(paths))])
            lead = (f"| {domain} | {' / '.join(map(str, q))} | {np.mean(lengths > 128):.1%} | {by_chars:.0%} / "
                    f"{by_tokens:.0%} " if i == 0 else "| | | | ")
            print(f"{lead}| {name} | {rate:.1f} | {rate / base:.2f} | {c.mean():.5f} | {c.min():.5f} |", flush=True)
    n = len(DOMAINS) * args.items
    base = n / totals[next(iter(paths))]
    print("\nall domains: " + "; ".join(f"{name} {n / t:.1f} items/s ({n / t / base:.2f}x)"
                                        for name, t in totals.items()))
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
