"""recbase: item text → concept-ID tokenizer → shards → DeepSpeed pretraining → zero-shot evaluation.

The console command ``recbase``: every module in :mod:`recbase.commands` is one sub-command. It defines ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are discovered, so a stage adds its command
by adding a file, and importing one command never imports the heavy dependencies of another.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import recbase.commands
from recbase.errors import UserError


def _command_modules() -> dict[str, str]:
    names = {}
    for info in pkgutil.iter_modules(recbase.commands.__path__):
        if not info.name.startswith("_"):
            names[info.name.replace("_", "-")] = f"recbase.commands.{info.name}"
    return dict(sorted(names.items()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recbase", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in _command_modules().items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a :class:`~recbase.errors.UserError` is printed as one line and gives exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
