"""Zero-shot evaluation: ``python launch/evaluate.py --config eval.json [--model NAME=PATH ...] [key=value ...]``.

Same as ``recbase evaluate``; the logic lives in :mod:`recbase.eval.job`.
"""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
