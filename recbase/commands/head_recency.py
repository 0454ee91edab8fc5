"""``recbase head-recency --data DIR --embeddings DIR --domains a,b --out FILE``: the attention head's recency
biases fitted listwise on the pretraining domains (for ``model.embedding_head_recency``)."""
from __future__ import annotations

HELP = "fit the embedding head's recency biases listwise on the pretraining domains' real text embeddings"


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="data folder with <domain>/items.parquet, interactions.parquet")
    parser.add_argument("--embeddings", required=True, help="their text embeddings (recbase embed)")
    parser.add_argument("--domains", required=True, help="the pretraining domains, comma-separated")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negatives and of the fit")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (each a batch of every domain)")


def run(args) -> int:
    import time

    from recbase.train.head_recency import domain_slates, fit_recency, write_recency

    t0 = time.perf_counter()
    domains = args.domains.split(",")
    slates = [domain_slates(args.data, args.embeddings, d, args.seed) for d in domains]
    biases, scale = fit_recency(slates, args.seed, args.steps)
    write_recency(args.out, biases, {"domains": domains, "slates": [len(s) for s in slates], "seed": args.seed,
                                     "steps": args.steps, "scale": round(scale, 4)})
    print(f"recency biases (latest first) {[round(float(b), 2) for b in biases]}, fitted on "
          f"{sum(len(s) for s in slates):,} slates of {len(domains)} domains in {time.perf_counter() - t0:.0f} s; "
          f"wrote {args.out}")
    return 0
