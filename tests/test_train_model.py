"""The single-device model: packed loss equals per-user loss, the hybrid mask, the fused head, the init."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbase.data.loader import make_batch, pack_rows
from recbase.train.config import ModelConfig
from recbase.train.model import (IGNORE_INDEX, TokenLossModel, add_dropout, build_model, hybrid_labels,
                                 init_weights, qwen2_config)
from recbase.vocab import Vocab

VOCAB = Vocab(levels=4, codebook_size=16)
TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def _model(attention="sdpa", seed=0):
    torch.manual_seed(123)
    return build_model(qwen2_config(TINY, VOCAB.model_vocab_size, attention), seed)


def _users(n=9, seed=0):
    """Users of 2..11 items: bos, L tokens per item, eos for some."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n):
        items = rng.integers(0, VOCAB.codebook_size, size=(int(rng.integers(2, 12)), VOCAB.levels))
        tokens = [VOCAB.bos_id, *VOCAB.encode_codes(items).ravel().tolist()] + ([VOCAB.eos_id] if u % 2 else [])
        users.append(np.array(tokens, dtype=np.int64))
    return users


def _packed(users, seq_len=128, batch=4):
    rows = list(pack_rows(((u, 1) for u in users), seq_len))
    assert len(rows) <= batch and sum(len(r) for r in rows) == len(users)
    batch = make_batch(rows, batch, seq_len, VOCAB.pad_id)
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _loss(model, batch):
    return model(batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"])


def _user_by_user(lm, users):
    total, count = 0.0, 0
    for u in users:
        ids = torch.as_tensor(u)[None]
        logits = lm(input_ids=ids).logits[0, :-1].float()
        total = total + F.cross_entropy(logits, ids[0, 1:], reduction="sum")
        count += len(u) - 1
    return total, count


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_users_one_by_one(attention):
    users = _users()
    lm = _model(attention)
    wrapped = TokenLossModel(lm, attention, levels=VOCAB.levels)
    batch = _packed(users)
    packed, n = _loss(wrapped, batch)
    packed.backward()
    packed_grad = lm.model.embed_tokens.weight.grad.clone()
    lm.zero_grad()
    ref, ref_n = _user_by_user(lm, users)
    ref.backward()
    assert int(n) == ref_n == batch["n_label_tokens"]
    assert packed.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(packed_grad, lm.model.embed_tokens.weight.grad, rtol=1e-4, atol=1e-5)


def test_without_the_mask_users_would_see_each_other():
    """The test above can fail: the second user of a row gets its standalone logits only with the mask."""
    users = _users()
    lm = _model()
    batch = _packed(users)
    wrapped = TokenLossModel(lm, "sdpa", levels=VOCAB.levels)
    ids, pos, cu = batch["input_ids"][:1], batch["position_ids"][:1], batch["cu_seqlens"]
    start, end = int(cu[1]), int(cu[2])          # the second segment of row 0
    alone = lm(input_ids=ids[:, start:end]).logits[0]
    mask = wrapped.attention_mask(ids, pos, cu, torch.float32)
    masked = lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, start:end]
    leaky = lm(input_ids=ids).logits[0, start:end]   # one causal sequence over the whole row
    torch.testing.assert_close(masked, alone, rtol=1e-4, atol=1e-5)
    assert (leaky - alone).abs().max().item() > 1e-3


def test_hybrid_sees_its_own_item_and_drops_leaking_labels():
    users = _users(n=3)
    lm = _model()
    batch = _packed(users)
    hybrid = TokenLossModel(lm, "sdpa", "hybrid", VOCAB.levels)
    causal = TokenLossModel(lm, "sdpa", "causal", VOCAB.levels)
    # position 2 of user 0 is level 1 of its first item; change level 3 of the same item (position 4)
    # and level 0 of the next item (position 5)
    ids, pos, cu = batch["input_ids"], batch["position_ids"], batch["cu_seqlens"]

    def hidden(model, ids):
        mask = model.attention_mask(ids, pos, cu, torch.float32)
        return lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[0]

    same_item, next_item = ids.clone(), ids.clone()
    same_item[0, 4] = VOCAB.level_range(3)[0] + (int(ids[0, 4]) - VOCAB.level_range(3)[0] + 1) % 16
    next_item[0, 5] = VOCAB.level_range(0)[0] + (int(ids[0, 5]) - VOCAB.level_range(0)[0] + 1) % 16
    base_h, base_c = hidden(hybrid, ids), hidden(causal, ids)
    assert not torch.allclose(hidden(hybrid, same_item)[2], base_h[2])     # sees later tokens of its item
    torch.testing.assert_close(hidden(hybrid, next_item)[:5], base_h[:5])   # never the next item
    torch.testing.assert_close(hidden(causal, same_item)[:4], base_c[:4])   # causal: nothing later
    # only predictions into a new item (or eos) are kept: one label per item instead of L
    kept = hybrid_labels(batch["labels"], pos, VOCAB.levels)
    n_items = sum((len(u) - 1) // VOCAB.levels for u in users)
    n_eos = sum(int(u[-1] == VOCAB.eos_id) for u in users)
    assert int((kept != IGNORE_INDEX).sum()) == n_items + n_eos
    loss, n = _loss(hybrid, batch)
    assert int(n) == n_items + n_eos
    assert torch.isfinite(loss)


def test_fused_linear_cross_entropy_matches_materialised_logits():
    users = _users()
    batch = _packed(users)
    losses, grads = [], []
    for fused in (False, True):
        lm = _model()
        loss, _ = _loss(TokenLossModel(lm, "sdpa", levels=VOCAB.levels, fused_linear_ce=fused), batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(lm.model.embed_tokens.weight.grad)
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_init_is_a_function_of_seed_and_names_only():
    a, b, c = _model(seed=0), _model(seed=0), _model(seed=1)
    torch.manual_seed(999)   # the global RNG plays no part
    init_weights(b, seed=0, std=TINY.init_std)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "norm" not in name and "bias" not in name:
            assert not torch.equal(pa, pc), name
            assert pa.std().item() == pytest.approx(TINY.init_std, rel=0.2), name
    assert torch.equal(a.model.norm.weight, torch.ones_like(a.model.norm.weight))


def test_dropout_changes_outputs_in_training_only():
    cfg = ModelConfig(**{**TINY.__dict__, "dropout": 0.2})
    plain = _model()
    dropped = build_model(qwen2_config(cfg, VOCAB.model_vocab_size, "sdpa"), seed=0)
    add_dropout(dropped, cfg.dropout)
    assert dropped.config.attention_dropout == 0.2
    assert list(dropped.state_dict()) == list(plain.state_dict())    # the export is the same model
    ids = torch.as_tensor(_users(n=1)[0])[None]
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=0)
    dropped.train()
    torch.manual_seed(0)
    first = dropped(input_ids=ids).logits
    second = dropped(input_ids=ids).logits
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, plain(input_ids=ids).logits)
    torch.manual_seed(0)
    torch.testing.assert_close(dropped(input_ids=ids).logits, first, rtol=0, atol=0)   # seeded: reproducible


def test_code_init_adds_a_linear_image_of_the_codewords_per_level():
    from recbase.train.model import init_code_embeddings

    codebooks = torch.randn(VOCAB.levels, VOCAB.codebook_size, 8, generator=torch.Generator().manual_seed(0))
    plain, model = _model(), _model()
    init_code_embeddings(model, codebooks, VOCAB.n_special, seed=0, std=0.02)
    before, after = plain.get_input_embeddings().weight, model.get_input_embeddings().weight
    assert torch.equal(before[:VOCAB.n_special], after[:VOCAB.n_special])       # specials untouched
    end = VOCAB.n_special + VOCAB.levels * VOCAB.codebook_size
    assert torch.equal(before[end:], after[end:])                              # rounding rows untouched
    added = (after - before).detach()[VOCAB.n_special:end].view(VOCAB.levels, VOCAB.codebook_size, -1).double()
    for level in range(VOCAB.levels):
        # what was added is an affine function of the level's codewords (least squares fits it exactly) ...
        x = torch.cat([codebooks[level].double(), torch.ones(VOCAB.codebook_size, 1, dtype=torch.float64)], 1)
        fit = torch.linalg.lstsq(x, added[level]).solution
        assert torch.allclose(x @ fit, added[level], atol=1e-6)
        # ... centred, with the init's spread
        assert added[level].mean(0).abs().max() < 1e-6
        assert added[level].std().item() == pytest.approx(0.02, rel=1e-3)
    # close codewords get close embeddings
    cos = F.cosine_similarity(added[0][0:1], added[0], dim=1)
    cw = F.cosine_similarity(codebooks[0][0:1].double() - codebooks[0].double().mean(0),
                             codebooks[0].double() - codebooks[0].double().mean(0), dim=1)
    assert np.corrcoef(cos.numpy(), cw.numpy())[0, 1] > 0.5
