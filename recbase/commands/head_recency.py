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
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps, each a batch of every domain "
                             "(default: recbase.train.head_recency.STEPS)")


def run(args) -> int:
    from recbase.train.head_recency import STEPS, fit_domains

    steps = STEPS if args.steps is None else args.steps
    print(fit_domains(args.data, args.embeddings, args.domains.split(","), args.out, args.seed, steps))
    return 0
