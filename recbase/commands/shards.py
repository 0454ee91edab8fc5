"""``recbase shards --config cfg.json [key=value ...]``: interactions + item codes -> WebDataset shards + eval sets."""
from __future__ import annotations

from recbase.commands._array import add_array_task_arguments, array_task

HELP = "build WebDataset shards of users' concept-ID sequences and eval sets for held-out domains (resumable)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="JSON file of ShardConfig (recbase/data/shards.py); a bare name is also "
                                         "looked up in launch/configs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. workers=8 eval.max_pairs=5000")
    add_array_task_arguments(parser, "slice of users", "only write manifest.json from the finished tasks' manifests "
                                                       "(final array-job step)",
                             fallback=("the config's task_index", "the config's num_tasks"))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards of another build already in <out_dir>/<name> (without it they are "
                             "refused); the new build goes to a side folder and replaces them once complete (with "
                             "several tasks, at --merge)")


def run(args) -> int:
    import logging
    from pathlib import Path

    from recbase.config import load_config
    from recbase.data.shard_format import MANIFEST, read_manifest
    from recbase.data.shards import ShardConfig, build_shards, merge_build
    from recbase.presets import preset_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(args.overrides)
    task, tasks = array_task(args)
    if task is not None:
        overrides.append(f"task_index={task}")
    if tasks is not None:
        overrides.append(f"num_tasks={tasks}")
    cfg = load_config(ShardConfig, args.config, overrides, search_dirs=[preset_dir()])
    if args.merge:
        root = merge_build(cfg)
    else:
        root = build_shards(cfg, overwrite=args.overwrite)
        final = Path(cfg.out_dir) / cfg.name
        if root != final:
            print(f"task {cfg.task_index} of {cfg.num_tasks} done in {root}/ (--merge, once every task has finished, "
                  f"writes its manifest.json and puts it in place of {final}/)")
            return 0
        if not (root / MANIFEST).exists():
            print(f"task {cfg.task_index} of {cfg.num_tasks} done in {root}/ (manifest.json is written when every "
                  f"task has finished, or by --merge)")
            return 0
    path = root / MANIFEST
    manifest = read_manifest(root)
    for split, t in manifest["totals"].items():
        print(f"{split}: {t['shards']} shards, {t['users']:,} users, {t['tokens']:,} tokens, "
              f"{t['bytes'] / max(t['tokens'], 1):.2f} bytes/token")
    for domain, e in manifest["eval_sets"].items():
        print(f"eval {domain}: {e['users']:,} users, {e['pairs']:,} pairs ({e['negatives']} negatives)")
    print(f"wrote {path}")
    return 0
