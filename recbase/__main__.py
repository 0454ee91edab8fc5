"""``python -m recbase``: the ``recbase`` console command, for a venv's python without its scripts on PATH."""
import sys

from recbase.cli import main

sys.exit(main())
