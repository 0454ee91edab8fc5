"""Pretraining entry point: ``deepspeed launch/pretrain.py --config 1.5b.json [key=value ...]``.

Also runs under ``torchrun`` and as plain ``python`` (one process); same arguments as ``recbase pretrain``.
"""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
