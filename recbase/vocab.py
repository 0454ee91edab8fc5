"""The token vocabulary shared by shards, trainer and evaluator.

token id = ``n_special + level * K + code`` for level 0..L-1 (plus an optional disambiguation level, which is just
one more level); specials come first. The model's embedding table is rounded up to a multiple of 128.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPECIAL_TOKENS = ("pad", "bos", "eos")
N_SPECIAL = 8  # pad, bos, eos, and room for a few more without shifting concept ids


@dataclass(frozen=True)
class Vocab:
    levels: int
    codebook_size: int
    n_special: int = N_SPECIAL
    specials: tuple = field(default=SPECIAL_TOKENS)
    pad_multiple: int = 128

    @property
    def pad_id(self) -> int:
        return self.specials.index("pad")

    @property
    def bos_id(self) -> int:
        return self.specials.index("bos")

    @property
    def eos_id(self) -> int:
        return self.specials.index("eos")

    @property
    def n_tokens(self) -> int:
        """Ids actually used: specials plus every (level, code)."""
        return self.n_special + self.levels * self.codebook_size

    @property
    def model_vocab_size(self) -> int:
        m = self.pad_multiple
        return (self.n_tokens + m - 1) // m * m

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Map codes ``[..., L]`` (ints in [0, K)) to token ids of the same shape."""
        codes = np.asarray(codes)
        if codes.shape[-1] != self.levels:
            raise ValueError(f"codes have {codes.shape[-1]} levels, vocabulary has {self.levels}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes outside [0, {self.codebook_size})")
        offsets = self.n_special + np.arange(self.levels, dtype=np.int64) * self.codebook_size
        return codes.astype(np.int64) + offsets

    def decode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode_codes` for a ``[..., L]`` array of concept tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        offsets = self.n_special + np.arange(self.levels, dtype=np.int64) * self.codebook_size
        codes = tokens - offsets
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError("tokens are not concept tokens of their level")
        return codes

    def level_range(self, level: int) -> tuple[int, int]:
        """Token id range [lo, hi) of ``level``."""
        lo = self.n_special + level * self.codebook_size
        return lo, lo + self.codebook_size

    def layout(self) -> str:
        """The id layout in words, for readers of an exported model that have no recbase at hand."""
        specials = ", ".join(f"{i} = {name}" for i, name in enumerate(self.specials))
        return (f"token id = {self.n_special} + level * {self.codebook_size} + code, for level 0..{self.levels - 1} "
                f"and code 0..{self.codebook_size - 1}; ids below {self.n_special} are specials ({specials}); an "
                f"item is its {self.levels} ids in level order; a history is bos, its items in time order, then eos")

    def to_dict(self) -> dict:
        return {"levels": self.levels, "codebook_size": self.codebook_size, "n_special": self.n_special,
                "specials": list(self.specials), "pad_multiple": self.pad_multiple,
                "model_vocab_size": self.model_vocab_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        return cls(levels=int(d["levels"]), codebook_size=int(d["codebook_size"]),
                   n_special=int(d.get("n_special", N_SPECIAL)),
                   specials=tuple(d.get("specials", SPECIAL_TOKENS)), pad_multiple=int(d.get("pad_multiple", 128)))
