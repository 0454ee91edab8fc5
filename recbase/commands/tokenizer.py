"""``recbase tokenizer {train,encode,report}``: train the item tokenizer, write codes.parquet, report on it."""
from __future__ import annotations

HELP = "item tokenizer: train (clvae | rqkmeans | fsq), encode items to codes.parquet, report code usage"


def _domains(text: str | None) -> list[str] | None:
    return [d for d in text.split(",") if d] if text else None


def _add_artifact_arguments(p, out_help: str) -> None:
    """The arguments of ``encode`` and ``report``: an artifact applied to the domains of a data folder."""
    p.add_argument("--artifact", required=True, help="tokenizer artifact folder")
    p.add_argument("--data", required=True, help="data folder with <domain>/items.parquet")
    p.add_argument("--emb", required=True, help="embeddings folder written by `recbase embed`")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--domains", help="comma-separated domains (default: all in --data)")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("train", help="train on the union of the chosen domains and save the artifact")
    p.add_argument("--config", help="tokenizer config JSON (bare names are also looked up in launch/configs)")
    p.add_argument("--data", required=True, help="data folder with <domain>/items.parquet")
    p.add_argument("--emb", required=True, help="embeddings folder written by `recbase embed`")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an artifact already in --out")
    p.add_argument("--domains", help="comma-separated training domains (default: all in --data)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. kind=rqkmeans")

    p = sub.add_parser("encode", help="encode every domain of a data folder into codes.parquet")
    _add_artifact_arguments(p, "output codes.parquet")
    p.add_argument("--overwrite", action="store_true", help="replace codes of another tokenizer already at --out")

    p = sub.add_parser("report", help="code usage, collisions and reconstruction, trained vs unseen domains")
    _add_artifact_arguments(p, "folder for report.json, report.md and usage.png")
    p.add_argument("--pooled-norm", action="store_true",
                   help="normalise unseen domains with the training domains' pooled statistics instead of their own")


def run(args) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "train":
        from recbase.config import load_config
        from recbase.presets import preset_dir
        from recbase.tokenizer.train import TokenizerConfig, train_from_folders

        cfg = load_config(TokenizerConfig, args.config, args.overrides, [preset_dir()])
        tok = train_from_folders(cfg, args.data, args.emb, args.out, _domains(args.domains),
                                 overwrite=args.overwrite)
        print(f"tokenizer {tok.hash} ({tok.kind}, {tok.levels} x {tok.codebook_size}) → {args.out}")
        return 0

    from recbase.tokenizer.artifact import load_tokenizer

    tok = load_tokenizer(args.artifact)
    if args.action == "encode":
        from recbase.tokenizer.encode import write_codes

        table = write_codes(tok, args.data, args.emb, args.out, _domains(args.domains), overwrite=args.overwrite)
        print(f"wrote {args.out} ({table.num_rows:,} items, {tok.code_width} codes each, tokenizer {tok.hash[:12]})")
        return 0

    from recbase.tokenizer.report import markdown, tokenizer_report, write_report
    from recbase.tokenizer.train import load_domain_embeddings

    embeddings, _ = load_domain_embeddings(args.data, args.emb, _domains(args.domains))
    report = tokenizer_report(tok, embeddings, normalize_new=not args.pooled_norm)
    paths = write_report(report, args.out, tok.codebook_size)
    print(markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return 0
