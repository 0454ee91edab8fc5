"""``recbase embed --data DIR --out EMB_DIR``: item texts → per-domain float16 embeddings (resumable)."""
from __future__ import annotations

HELP = "embed every domain's item texts with a sentence-transformers model (resumable)"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="data folder with <domain>/items.parquet")
    parser.add_argument("--out", required=True, help="output folder for <domain>.npy + <domain>.json")
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="sentence-transformers model name or path (default: the packaged offline "
                             "all-MiniLM-L6-v2; 'hashing' = deterministic bag-of-words, for tests only)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    parser.add_argument("--chunk-size", type=int, default=2048, help="items per resumable chunk")
    parser.add_argument("--domains", help="comma-separated domains (default: all in --data)")


def run(args) -> int:
    import logging

    from recbase.tokenizer.embed import embed_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    domains = args.domains.split(",") if args.domains else None
    for s in embed_folder(args.data, args.out, args.model, args.batch_size, args.chunk_size, domains):
        state = "up to date" if s["skipped"] else f"embedded {s['embedded']:,} items"
        print(f"[{s['domain']}] {s['n_items']:,} x {s['dim']} ({s['model']}): {state}")
    print(f"wrote {args.out}/")
    return 0
