"""FlexAttention on packed rows: its block mask allows exactly what the dense mask allows, its forward equals the
SDPA dense-mask forward, and (on a GPU) its packed gradients equal those of the users run one at a time.

On CPU PyTorch runs FlexAttention forward only, and Hugging Face's ``torch.compile`` of it takes ~45 s on this
machine, so the CPU forward test swaps that compile wrapper for the plain ``flex_attention`` call (PyTorch's
unfused path: the same ``BlockMask`` and mask function, scores materialised). The compiled forward runs in a
``slow`` test, the compiled kernel's backward in the ``gpu`` test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recbase.data.loader import make_batch, pack_rows
from recbase.train.config import ModelConfig
from recbase.train.model import (TokenLossModel, build_model, item_blocks, packed_attention_mask, packed_block_mask,
                                 qwen2_config, resolve_attention, segment_ids)
from recbase.vocab import Vocab

VOCAB = Vocab(levels=4, codebook_size=16)
TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def _users(lengths_in_items, seed=0):
    """One user per entry: bos, L tokens per item, eos for every other user (odd token counts)."""
    rng = np.random.default_rng(seed)
    users = []
    for u, n in enumerate(lengths_in_items):
        items = rng.integers(0, VOCAB.codebook_size, size=(n, VOCAB.levels))
        tokens = [VOCAB.bos_id, *VOCAB.encode_codes(items).ravel().tolist()] + ([VOCAB.eos_id] if u % 2 else [])
        users.append(np.array(tokens, dtype=np.int64))
    return users


# a long user (over two 128-token tiles: full tiles below the diagonal), short ones, a padded tail
PACKED_USERS = [70, 3, 9, 2, 30, 11, 5, 1, 17, 4]
SEQ_LEN = 301


def _batch(users=PACKED_USERS, seq_len=SEQ_LEN, rows=3):
    users = _users(users)
    packed = list(pack_rows(((u, 1) for u in users), seq_len))
    batch = make_batch(packed, rows, seq_len, VOCAB.pad_id)
    return users, {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def block_mask_elements(block_mask) -> torch.Tensor:
    """``[B, Q, KV]`` booleans of what the FlexAttention kernel computes with ``block_mask``: every element of a
    full tile, the ``mask_mod`` elements of a partial tile, nothing of a tile that is in neither list."""
    from torch.nn.attention.flex_attention import create_mask

    q_len, kv_len = block_mask.seq_lengths
    bq, bkv = block_mask.BLOCK_SIZE

    def expand(num, idx):
        """Row tile ``t`` of row ``b`` lists its kv tiles in ``idx[b, 0, t, :num[b, 0, t]]``."""
        out = torch.zeros(num.shape[0], num.shape[2] * bq, idx.shape[3] * bkv, dtype=torch.bool)
        for b in range(num.shape[0]):
            for t in range(num.shape[2]):
                for kv in idx[b, 0, t, :int(num[b, 0, t])].tolist():
                    out[b, t * bq:(t + 1) * bq, kv * bkv:(kv + 1) * bkv] = True
        return out[:, :q_len, :kv_len]

    partial = expand(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = expand(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    b = partial.shape[0]
    elements = create_mask(block_mask.mask_mod, b, None, q_len, kv_len, device="cpu")[:, 0]
    return full | (partial & elements)


@pytest.mark.parametrize("hybrid", [False, True], ids=["causal", "hybrid"])
def test_block_mask_allows_exactly_what_the_dense_mask_allows(hybrid):
    _, batch = _batch()
    b, s = batch["input_ids"].shape
    segments = segment_ids(batch["cu_seqlens"], b, s)
    blocks = item_blocks(batch["position_ids"], VOCAB.levels) if hybrid else None
    dense = packed_attention_mask(segments, torch.float32, blocks)[:, 0] == 0
    block_mask = packed_block_mask(segments, blocks)
    got = block_mask_elements(block_mask)
    assert got.shape == dense.shape == (3, SEQ_LEN, SEQ_LEN)
    assert torch.equal(got, dense)
    # the long user fills full tiles (no mask evaluated there); with the causal pattern some tiles on or below the
    # diagonal (which a plain causal mask computes) hold no pair of one user and are skipped
    assert int(block_mask.full_kv_num_blocks.sum()) > 0
    tiles = -(-SEQ_LEN // block_mask.BLOCK_SIZE[0])
    computed = int(block_mask.kv_num_blocks.sum() + block_mask.full_kv_num_blocks.sum())
    assert hybrid or computed < 3 * tiles * (tiles + 1) // 2
    # users never see each other: the first user's last query sees nothing of the second user
    first_end = int(batch["cu_seqlens"][1])
    assert not got[0, first_end - 1, first_end:].any() and not got[0, first_end, :first_end].any()


@pytest.fixture
def uncompiled_flex(monkeypatch):
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    def plain(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention", plain)


# the uncompiled (reference) FlexAttention is what this test compares on CPU, so its advice to compile says nothing here
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("pattern", ["causal", "hybrid"])
def test_flex_forward_equals_sdpa_dense_mask_forward(pattern, uncompiled_flex):
    _, batch = _batch()
    torch.manual_seed(0)
    outputs = {}
    for attention in ("sdpa", "flex_attention"):
        lm = build_model(qwen2_config(TINY, VOCAB.model_vocab_size, attention), seed=3).eval()
        model = TokenLossModel(lm, attention, pattern, VOCAB.levels)
        ids, pos, cu = batch["input_ids"], batch["position_ids"], batch["cu_seqlens"]
        with torch.no_grad():
            mask = model.attention_mask(ids, pos, cu, torch.float32)
            hidden = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
            loss, n = model(ids, batch["labels"], pos, cu)
        outputs[attention] = (hidden, loss, n)
    (h_ref, loss_ref, n_ref), (h_flex, loss_flex, n_flex) = outputs["sdpa"], outputs["flex_attention"]
    torch.testing.assert_close(h_flex, h_ref, atol=1e-5, rtol=1e-5)
    assert int(n_flex) == int(n_ref) > 0
    assert loss_flex.item() == pytest.approx(loss_ref.item(), rel=1e-5)


@pytest.mark.slow
def test_compiled_flex_forward_compiles_once_for_every_packing():
    """Hugging Face's compiled FlexAttention (as on a GPU, here the CPU forward: ~45 s to compile) on three
    batches packed differently: each equals SDPA, and a new batch's BlockMask (a new mask function over new
    segments) reuses the one compiled graph instead of recompiling every step."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    flex = build_model(qwen2_config(TINY, VOCAB.model_vocab_size, "flex_attention"), seed=3).eval()
    sdpa = build_model(qwen2_config(TINY, VOCAB.model_vocab_size, "sdpa"), seed=3).eval()
    for seed in range(3):
        lengths = np.random.default_rng(seed).integers(1, 30, size=12).tolist()
        _, batch = _batch(lengths, seq_len=256, rows=4)
        args = [batch[k] for k in ("input_ids", "labels", "position_ids", "cu_seqlens")]
        with torch.no_grad():
            got, _ = TokenLossModel(flex, "flex_attention", levels=VOCAB.levels)(*args)
            want, _ = TokenLossModel(sdpa, "sdpa", levels=VOCAB.levels)(*args)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_auto_never_needs_flash_attn(monkeypatch):
    import recbase.train.model as model_mod

    monkeypatch.setattr(model_mod, "flash_attn_available", lambda: False)
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("auto", "cuda") == "flex_attention"
    monkeypatch.setattr(model_mod, "flash_attn_available", lambda: True)
    assert resolve_attention("auto", "cuda") == "flash_attention_2"
    assert resolve_attention("auto", "cuda", "hybrid") == "flex_attention"   # FA2 takes no mask
    assert resolve_attention("sdpa", "cuda") == "sdpa"
    for name in ("flex_attention", "flash_attention_2"):
        with pytest.raises(ValueError, match=f"model.attention={name} needs a CUDA device"):
            resolve_attention(name, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attention, pattern", [("flex_attention", "causal"), ("flex_attention", "hybrid"),
                                                ("flash_attention_2", "causal")])
def test_packed_gradients_equal_one_user_at_a_time_on_gpu(attention, pattern):
    """Compiled FlexAttention (fp32) and FA2 varlen (bf16: FA2 has no fp32) on packed rows against the same
    users one at a time through SDPA with the dense mask of that user alone: loss, label count, gradients."""
    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn")
    users, batch = _batch()
    dev = torch.device("cuda")
    lm = build_model(qwen2_config(TINY, VOCAB.model_vocab_size, attention), seed=3).to(dev)
    ref_lm = build_model(qwen2_config(TINY, VOCAB.model_vocab_size, "sdpa"), seed=3).to(dev)
    if attention == "flash_attention_2":
        lm, ref_lm = lm.to(torch.bfloat16), ref_lm.to(torch.bfloat16)
    packed = TokenLossModel(lm, attention, pattern, VOCAB.levels)
    loss, n = packed(*(batch[k].to(dev) for k in ("input_ids", "labels", "position_ids", "cu_seqlens")))
    loss.backward()

    ref_model = TokenLossModel(ref_lm, "sdpa", pattern, VOCAB.levels)
    ref_loss, ref_n = 0.0, 0
    for u in users:
        ids = torch.as_tensor(u, device=dev)[None]
        labels = ids.clone()
        labels[0, 0] = -100
        pos = torch.arange(len(u), device=dev)[None]
        cu = torch.tensor([0, len(u)], dtype=torch.int32, device=dev)
        user_loss, user_n = ref_model(ids, labels, pos, cu)
        user_loss.backward()
        ref_loss, ref_n = ref_loss + user_loss.detach(), ref_n + int(user_n)
    assert int(n) == ref_n
    tol = 2e-2 if attention == "flash_attention_2" else 1e-4   # bf16 (one rounding per op) vs fp32
    assert loss.item() == pytest.approx(float(ref_loss), rel=tol)
    for (name, p), q in zip(lm.named_parameters(), ref_lm.parameters()):
        err = ((p.grad.float() - q.grad.float()).norm() / q.grad.float().norm()).item()
        assert err < tol, f"{name}: relative gradient error {err:.2e}"
