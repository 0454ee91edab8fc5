"""Embed item texts: ``python tokenizer/embed.py --data DIR --out EMB_DIR`` (same as ``recbase embed``)."""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
