"""``recbase suite RUN...``: the zero-shot dev suite's summary table over fold runs and seeds."""
from __future__ import annotations

HELP = "summarise zero-shot fold runs: model − text-similarity bar per held-out domain and Overall, over seeds"


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", help="pipeline run folders (each with pipeline_config.json and eval/)")
    parser.add_argument("--model", default="zero-shot", help="model name in the runs' metrics.json")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--fuse", metavar="SCORE,...", help="also fuse each score (pmi or a column of the runs' "
                        "eval/pairs, e.g. cpmi_trie) with the embedding head at the weight the other folds choose")
    parser.add_argument("--weights", default="0.05,0.1,0.2,0.3,0.5,1.0", help="fusion weights to choose from")
    parser.add_argument("--calibrate", action="store_true", help="also score the bar, the head and PMI + head as "
                        "each user's posterior over its candidates (softmax of beta × score, beta chosen on the "
                        "other folds): how much of a gap is calibration across users, how much order within users")
    parser.add_argument("--betas", default="1,2,3,5,8,12,20,30,50", help="softmax sharpness values to choose from")


def run(args) -> int:
    from pathlib import Path

    from recbase.eval.suite import calibration_table, fusion_sweep, load_run, summary_table
    from recbase.io import atomic_write_text

    table = summary_table([load_run(r, args.model) for r in args.runs])
    if args.fuse:
        table += "\n\n" + fusion_sweep(args.runs, args.model, args.fuse.split(","),
                                        [float(w) for w in args.weights.split(",")])
    if args.calibrate:
        table += "\n\n" + calibration_table(args.runs, args.model, [float(b) for b in args.betas.split(",")])
    print(table)
    if args.out:
        atomic_write_text(Path(args.out), table + "\n")
    return 0
