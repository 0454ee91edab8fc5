"""``recbase embed --data DIR --out EMB_DIR``: item texts → per-domain float16 embeddings (resumable)."""
from __future__ import annotations

from recbase.commands._array import add_array_task_arguments, array_task

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
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model weights and activations (default auto: float16 on CUDA, bfloat16 on a CPU with "
                             "bf16 units, else float32); recorded in <domain>.json")
    parser.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace embeddings in --out made with another model or setting (without it they are "
                             "refused; embeddings of changed items are always made again)")
    parser.add_argument("--workers", type=int, default=0,
                        help="CPU threads, each running the model single-threaded (default 0: one per CPU, at "
                             "most 8; 1 = one model call with torch's own thread count)")
    add_array_task_arguments(parser, "chunks", "only join the finished tasks' chunks into <domain>.npy + .json "
                                               "(final array-job step)")


def run(args) -> int:
    import logging

    from recbase.tokenizer.embed import embed_folder, merge_folder

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    domains = args.domains.split(",") if args.domains else None
    task, tasks = array_task(args)
    task, tasks = (task or 0), (tasks or 1)
    if args.merge:
        for s in merge_folder(args.data, args.out, tasks, domains):
            state = "up to date" if s["skipped"] else "merged"
            print(f"[{s['domain']}] {s['n_items']:,} x {s['dim']} ({s['model']}): {state}")
        print(f"wrote {args.out}/")
        return 0
    summaries = embed_folder(args.data, args.out, args.model, args.batch_size, args.chunk_size, domains,
                             precision=args.precision, device=args.device, workers=args.workers, task_index=task,
                             num_tasks=tasks, overwrite=args.overwrite)
    for s in summaries:
        state = "up to date" if s["skipped"] else f"embedded {s['embedded']:,} items"
        settings = ", ".join(f"{k} {s[k]}" for k in ("precision", "max_seq_length") if k in s)
        print(f"[{s['domain']}] {s['n_items']:,} x {s['dim']} ({s['model']}{', ' + settings if settings else ''}): "
              f"{state}")
    if tasks > 1:
        print(f"task {task} of {tasks} done in {args.out}/ (the final files are written by --merge once every task "
              f"has finished)")
    else:
        print(f"wrote {args.out}/")
    return 0
