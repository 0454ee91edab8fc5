"""``recbase ingest FORMAT PATH --out DIR``: a public dataset -> items.parquet + interactions.parquet.

FORMAT is a reader format or a preset name (``recbase.data.presets``: a known folder layout, e.g.
``amazon-books-2014``)."""
from __future__ import annotations

HELP = "read a public dataset (movielens, amazon, mind, ...) into items.parquet + interactions.parquet"


def add_filter_arguments(parser) -> None:
    """The user filters of the ingest and its --overwrite (also used by ``recbase data fetch``)."""
    from recbase.data.ingest import MAX_HISTORY, MIN_USER_INTERACTIONS

    parser.add_argument("--min-user-interactions", type=int, default=MIN_USER_INTERACTIONS,
                        help="drop users with fewer interactions (paper: 15; 0 keeps all)")
    parser.add_argument("--max-history", type=int, default=MAX_HISTORY,
                        help="keep only each user's last N interactions (paper: 2500; 0 keeps all)")
    parser.add_argument("--interacted-items-only", action="store_true",
                        help="keep only catalog items that a kept interaction uses")
    parser.add_argument("--max-users", type=int, default=0,
                        help="keep a random sample of N users (seed 0) and only the items they touched (0 keeps all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the domain's tables when they were made from another dataset, format or "
                             "filter (without it such tables are refused; a rerun of the same ingest replaces them)")


def ingest_and_report(fmt: str, path, out, **kwargs) -> int:
    """Ingest and print the summary."""
    from recbase.data.ingest import ingest

    summary = ingest(fmt, path, out, **kwargs)
    print(summary.format())
    print(f"wrote {out}/{summary.domain}/")
    return 0


def target_domain(args) -> str:
    """The domain an ingest with these arguments writes: ``--domain``, else the preset's, else PATH's name."""
    from recbase.data.presets import load_preset, preset_names
    from recbase.data.readers import default_domain

    preset_domain = load_preset(args.format).domain if args.format in preset_names() else ""
    return args.domain or preset_domain or default_domain(args.path)


def add_arguments(parser) -> None:
    from recbase.data.presets import preset_names
    from recbase.data.readers import FORMATS

    parser.add_argument("format", choices=sorted(FORMATS) + preset_names(), metavar="FORMAT",
                        help="; ".join(f"{name}: {what}" for name, (_, _, what) in FORMATS.items())
                        + "; or a preset: " + ", ".join(preset_names()))
    parser.add_argument("path", help="the unpacked dataset folder (or file); for generic, the folder the spec's "
                                     "file names are relative to, or the spec file itself")
    parser.add_argument("--out", required=True, help="output folder; tables go to OUT/<domain>/")
    parser.add_argument("--domain", help="domain name (default: from PATH)")
    add_filter_arguments(parser)
    parser.add_argument("--kind", help="template kind for recbole and generic (movie, product, book, ...)")
    parser.add_argument("--spec", help="generic: JSON spec file (see docs/data.md)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="generic: spec fields, e.g. --set items=items.csv user_id=user text_fields=title,genres")


def run(args) -> int:
    from recbase.data.presets import load_preset, preset_names, reader_options

    options = {}
    fmt = args.format
    from_preset = fmt in preset_names()
    if from_preset:
        if args.spec or args.overrides:
            raise SystemExit(f"--spec and --set apply to the generic format only, not to the preset {fmt}")
        preset = load_preset(fmt)
        try:
            fmt, options = reader_options(preset, args.kind)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    elif args.format == "generic":
        from recbase.data.readers.generic import load_spec

        options["spec"] = load_spec(args.path, args.spec, args.overrides)
    elif args.spec or args.overrides:
        raise SystemExit(f"--spec and --set apply to the generic format only, not {args.format}")
    if args.kind and not from_preset:   # a preset took --kind above
        if args.format not in ("recbole", "generic"):
            raise SystemExit(f"--kind applies to recbole and generic only; {args.format} has a fixed kind")
        options["kind"] = args.kind
    return ingest_and_report(fmt, args.path, args.out, domain=target_domain(args),
                             min_user_interactions=args.min_user_interactions, max_history=args.max_history,
                             interacted_items_only=args.interacted_items_only, max_users=args.max_users,
                             overwrite=args.overwrite, **options)
