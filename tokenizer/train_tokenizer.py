"""Train, encode with or report on the item tokenizer: ``python tokenizer/train_tokenizer.py train --config C ...``
(same as ``recbase tokenizer ...``)."""
import sys

from recbase.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenizer", *sys.argv[1:]]))
