"""Build training shards: ``python tokenizer/build_shards.py --config cfg.json [key=value ...]``
(same as ``recbase shards``)."""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
