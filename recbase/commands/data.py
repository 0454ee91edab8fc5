"""``recbase data fetch NAME --dest DIR`` and ``recbase data list``: known public datasets."""
from __future__ import annotations

HELP = "download a known public dataset (verified by SHA-256), unpack it and ingest it; or list them"


def add_arguments(parser) -> None:
    from recbase.commands.ingest import add_filter_arguments

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="the datasets `fetch` knows")
    fetch = sub.add_parser("fetch", help="download, verify, unpack and ingest one dataset")
    fetch.add_argument("name", help="dataset name (see `recbase data list`)")
    fetch.add_argument("--dest", required=True, help="download folder; the dataset goes to DEST/NAME/")
    fetch.add_argument("--out", help="tables folder for the ingest (default: DEST/tables)")
    fetch.add_argument("--no-ingest", action="store_true", help="only download, verify and unpack")
    fetch.add_argument("--domain", help="domain name (default: NAME)")
    add_filter_arguments(fetch)


def run(args) -> int:
    from pathlib import Path

    from recbase.data.fetch import REGISTRY, fetch

    if args.action == "list":
        for name, entry in sorted(REGISTRY.items()):
            print(f"{name:40s} {entry.describe()}")
        return 0
    folder = fetch(args.name, args.dest)
    print(f"{args.name}: verified and unpacked in {folder}")
    if args.no_ingest:
        return 0
    from recbase.commands.ingest import ingest_and_report

    out = args.out or str(Path(args.dest) / "tables")
    return ingest_and_report(REGISTRY[args.name].format, folder, out, domain=args.domain or args.name,
                             min_user_interactions=args.min_user_interactions, max_history=args.max_history,
                             interacted_items_only=args.interacted_items_only, max_users=args.max_users,
                             overwrite=args.overwrite)
