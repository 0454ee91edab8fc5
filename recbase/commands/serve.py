"""``recbase serve``: the recommender over HTTP (POST /recommend, POST /score, GET /health)."""
from __future__ import annotations

import argparse

HELP = "serve recommendations for a catalog over HTTP (FastAPI + uvicorn)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recbase.commands.recommend import add_catalog_arguments

    add_catalog_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one, printed)")


def run(args: argparse.Namespace) -> int:
    import logging

    from recbase.commands.recommend import load
    from recbase.serve import create_app, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rec, catalog = load(args)     # bad input raises UserError: one line on stderr, exit status 2 (recbase.cli)

    print(f"loaded {rec.model.path} and {len(catalog):,} {catalog.domain} items from {args.catalog}", flush=True)
    serve(create_app(rec, catalog), args.host, args.port)
    return 0
