"""Fine-tuning entry point: ``deepspeed launch/finetune.py --init runs/x/hf --config finetune.json data.shards=...``.

Same trainer as pretraining, started from given weights; same arguments as ``recbase finetune``.
"""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
