"""``recbase recommend``: the top-K items of a catalog for one history, or a given list of candidates ranked."""
from __future__ import annotations

import argparse

HELP = "recommend items of a (new) catalog for a history with a pretrained model, or rank given candidates"


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, tokenizer and catalog options (shared with ``recbase serve``)."""
    parser.add_argument("--model", required=True, help="Hugging Face export folder (e.g. demo_out/run/hf)")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer artifact the model was trained with")
    parser.add_argument("--catalog", required=True,
                        help="items.parquet, a domain folder (e.g. demo_out/data/news), or a raw dataset with --format")
    parser.add_argument("--format", dest="fmt", metavar="FORMAT",
                        help="read --catalog as a raw dataset of this reader format (see `recbase ingest -h`); "
                             "default: an items.parquet or a domain folder holding one")
    parser.add_argument("--domain", help="the catalog's domain name (default: from the table or the folder)")
    parser.add_argument("--spec", help="--format generic: JSON spec file (see docs/data.md)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="--format generic: spec fields, e.g. --set items=items.csv text_fields=title")
    parser.add_argument("--cache-dir", help="where catalog embeddings and codes are cached (default: "
                                            "$RECBASE_CACHE or ~/.cache/recbase)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--beam-width", type=int, default=20, help="beams kept per level (widened to k + history)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_catalog_arguments(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="*", metavar="ITEM_ID", help="the user's items, oldest first")
    who.add_argument("--user", help="take the history of this user from interactions.parquet beside the catalog")
    parser.add_argument("-k", type=int, default=10, help="how many items to return")
    parser.add_argument("--candidates", nargs="+", metavar="ITEM_ID",
                        help="rank these items instead of searching the whole catalog")
    parser.add_argument("--include-history", action="store_true",
                        help="allow items already in the history among the recommendations")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load(args: argparse.Namespace):
    """The recommender and the catalog named by the options of :func:`add_catalog_arguments`."""
    from recbase.recommend import Recommender

    options = {}
    if args.fmt == "generic":
        from recbase.data.readers.generic import load_spec

        options["spec"] = load_spec(args.catalog, args.spec, args.overrides)
    elif args.spec or args.overrides:
        from recbase.errors import UserError

        raise UserError("--spec and --set apply to --format generic only")
    rec = Recommender.from_pretrained(args.model, args.tokenizer, device=args.device, cache_dir=args.cache_dir,
                                      beam_width=args.beam_width)
    return rec, rec.load_catalog(args.catalog, args.fmt, args.domain, **options)


def user_history(catalog_source: str, user: str) -> list[str]:
    """A user's items in time order from the ``interactions.parquet`` beside the catalog's items table."""
    from pathlib import Path

    from recbase.data.tables import INTERACTIONS_FILE, user_histories
    from recbase.errors import UserError

    source = Path(catalog_source)
    domain_dir = source if source.is_dir() else source.parent
    path = domain_dir / INTERACTIONS_FILE
    if not path.is_file():
        raise UserError(f"{path}: no interactions table to take user {user!r}'s history from; "
                        f"give --history instead")
    sequences = user_histories(domain_dir)
    if user not in sequences:
        raise UserError(f"{path}: no user {user!r} ({len(sequences):,} users there)")
    return sequences[user]


def one_line(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def run(args: argparse.Namespace) -> int:
    import json
    import time

    rec, catalog = load(args)     # bad input raises UserError: one line on stderr, exit status 2 (recbase.cli)
    history = user_history(args.catalog, args.user) if args.user else args.history
    start = time.perf_counter()
    if args.candidates:
        found = rec.score(history, args.candidates, catalog)
    else:
        found = rec.recommend(history, args.k, not args.include_history, catalog)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"domain": catalog.domain, "history": history, "items": [r.to_dict() for r in found]},
                         indent=2))
        return 0
    what = f"{len(args.candidates)} candidates ranked" if args.candidates else f"top {len(found)}"
    print(f"{what} of {len(catalog):,} {catalog.domain} items after a history of {len(history)} "
          f"({seconds * 1000:.0f} ms; score = log P(item | history))")
    width = max([len(r.item_id) for r in found] + [4])
    print(f"{'rank':>4}  {'score':>8}  {'item'.ljust(width)}  text")
    for rank, r in enumerate(found, 1):
        print(f"{rank:>4}  {r.score:>8.3f}  {r.item_id.ljust(width)}  {one_line(r.text)}")
    return 0
