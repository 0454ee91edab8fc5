"""``recbase demo``: the pipeline runner with its default config, the built-in demo world (see
:mod:`recbase.pipeline`)."""
from __future__ import annotations

from recbase.commands.run import add_arguments, run  # noqa: F401  (this command is `recbase run` with the demo defaults)

HELP = "run the whole pipeline on the built-in demo world (CPU, minutes): world → … → zero-shot AUC table"
