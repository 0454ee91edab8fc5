"""The token layout: id = n_special + level * K + code, model vocab padded to a multiple of 128."""
import numpy as np
import pytest

from recbase.vocab import Vocab


def test_layout_and_round_trip():
    v = Vocab(levels=4, codebook_size=2048)
    assert (v.pad_id, v.bos_id, v.eos_id) == (0, 1, 2)
    assert v.n_tokens == 8 + 4 * 2048 and v.model_vocab_size == 8320 and v.model_vocab_size % 128 == 0
    codes = np.array([[0, 0, 0, 0], [2047, 5, 17, 2047]])
    tokens = v.encode_codes(codes)
    assert tokens[0].tolist() == [8, 8 + 2048, 8 + 2 * 2048, 8 + 3 * 2048]
    assert (v.decode_tokens(tokens) == codes).all()
    assert v.level_range(1) == (8 + 2048, 8 + 2 * 2048)
    assert Vocab.from_dict(v.to_dict()) == v


def test_bad_codes_and_tokens_are_refused():
    v = Vocab(levels=2, codebook_size=4)
    with pytest.raises(ValueError, match="outside"):
        v.encode_codes(np.array([[0, 4]]))
    with pytest.raises(ValueError, match="3 levels"):
        v.encode_codes(np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="not concept tokens"):
        v.decode_tokens(np.array([[8, 8]]))  # level-1 slot holds a level-0 token
