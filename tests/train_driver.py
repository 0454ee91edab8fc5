"""Run the trainer in one process on exactly the micro-batches that N data-parallel ranks would read.

``python tests/train_driver.py --ranks 2 --config tiny.json key=value ...`` interleaves the loaders of ranks
0..N-1 (so with N times the accumulation steps the global batch equals that of an N-rank run), and with
``--logits-out`` saves the trained model's logits on a fixed input for the export test.
"""
from __future__ import annotations

import argparse
import sys

import torch

from recbase.data.loader import PackedLoader
from recbase.train.config import load_train_config
from recbase.train.engine import shutdown
from recbase.train.loop import Trainer

PROBE = torch.arange(8, 72, dtype=torch.int64).view(2, 32)   # fixed input ids for the logits probe


class InterleavedLoader:
    """Micro-batches of ranks 0..N-1 in turn: rank 0's first, rank 1's first, ..., rank 0's second, ..."""

    def __init__(self, cfg, ranks: int):
        self.loaders = [PackedLoader(cfg.data.shards, cfg.data.train_split, cfg.data.seq_len,
                                     cfg.optim.micro_batch_size, rank=r, world_size=ranks,
                                     num_workers=cfg.data.num_workers, seed=cfg.seed, packed=cfg.data.packed)
                        for r in range(ranks)]
        self.vocab, self.manifest = self.loaders[0].vocab, self.loaders[0].manifest

    def __iter__(self):
        streams = [iter(loader) for loader in self.loaders]
        while True:
            for s in streams:
                yield next(s)

    def state_dict(self) -> dict:
        return {"ranks": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        for loader, s in zip(self.loaders, state["ranks"]):
            loader.load_state_dict(s)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--config", default="tiny.json")
    parser.add_argument("--logits-out", default="")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    trainer = Trainer(cfg, loader=InterleavedLoader(cfg, args.ranks))
    trainer.run()
    if args.logits_out:
        with torch.no_grad():
            trainer.engine.eval()
            logits = trainer.engine.module.lm(input_ids=PROBE).logits.float()
        if trainer.runtime.is_main:
            torch.save(logits, args.logits_out)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
