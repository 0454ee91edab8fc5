"""The SLURM array-task options shared by the offline stages that split their work (``embed``, ``shards``)."""
from __future__ import annotations

import os


def add_array_task_arguments(parser, unit: str, merge_help: str, fallback: tuple[str, str] = ("0", "1")) -> None:
    """``--task-index``/``--num-tasks`` (defaulting to the SLURM array variables, else ``fallback``) and
    ``--merge``."""
    parser.add_argument("--task-index", type=int,
                        help=f"this array task's {unit} (default: $SLURM_ARRAY_TASK_ID, else {fallback[0]})")
    parser.add_argument("--num-tasks", type=int,
                        help=f"number of array tasks (default: $SLURM_ARRAY_TASK_COUNT, else {fallback[1]})")
    parser.add_argument("--merge", action="store_true", help=merge_help)


def array_task(args) -> tuple[int | None, int | None]:
    """(task index, number of tasks) from the options or the SLURM array variables; None where neither says."""
    task = args.task_index if args.task_index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    tasks = args.num_tasks if args.num_tasks is not None else os.environ.get("SLURM_ARRAY_TASK_COUNT")
    return (None if task is None else int(task)), (None if tasks is None else int(tasks))
