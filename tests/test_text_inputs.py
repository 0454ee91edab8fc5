"""Items' text vectors as model inputs: an untrained projection changes nothing, an item's vector never reaches
the predictions of its own codes, every scoring path feeds the inputs training fed, and the model saves and loads
with them.

The reference throughout is written out by hand: the plain language model run on ``inputs_embeds`` where the
projected unit reconstruction of every item is added at positions L, 2L, ... (``bos`` at 0, then L tokens per
item), independently of how the library finds items.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from recbase.data.loader import make_batch, pack_rows
from recbase.errors import UserError
from recbase.eval.head_score import history_states
from recbase.eval.retrieval import Retriever
from recbase.eval.scoring import CandidateScorer, candidate_token_logprobs_fast
from recbase.eval.trie import CodeTrie
from recbase.tokenizer.artifact import Tokenizer
from recbase.train import checkpoint as ckpt
from recbase.train.config import ModelConfig, load_train_config
from recbase.train.embedding_head import ItemVectors
from recbase.train.export import TEXT_INPUTS_FILE, export_hf, load_model
from recbase.train.model import TokenLossModel, build_model, qwen2_config
from recbase.train.text_inputs import TextInputEmbedding, TextInputs, install
from recbase.vocab import Vocab

VOCAB = Vocab(levels=3, codebook_size=8)
DIM = 16
TINY = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                   max_position_embeddings=256)


def _tokenizer(seed: int = 0) -> Tokenizer:
    """A real RQ-Kmeans artifact with seeded codebooks: an item's vector is the sum of its codewords."""
    g = torch.Generator().manual_seed(seed)
    return Tokenizer(kind="rqkmeans", levels=VOCAB.levels, codebook_size=VOCAB.codebook_size, input_dim=DIM,
                     embedder="test", normalization="center",
                     codebooks=torch.randn(VOCAB.levels, VOCAB.codebook_size, DIM, generator=g))


def _users(n: int, seed: int = 0, min_items: int = 2, max_items: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[VOCAB.bos_id], VOCAB.encode_codes(
        rng.integers(0, VOCAB.codebook_size, size=(int(rng.integers(min_items, max_items)), VOCAB.levels))).ravel()])
        for _ in range(n)]


def _text_inputs(tok: Tokenizer, std: float = 0.0, seed: int = 0) -> TextInputs:
    """Text inputs of the tiny model; ``std`` > 0 moves the projection away from its zero start."""
    vectors = ItemVectors(tok, VOCAB)
    text = TextInputs(TINY.hidden_size, vectors.dim, VOCAB, vectors)
    if std:
        with torch.no_grad():
            text.proj.weight.normal_(std=std, generator=torch.Generator().manual_seed(seed))
    return text


def _lm(seed: int = 0):
    return build_model(qwen2_config(TINY, VOCAB.model_vocab_size, pad_token_id=VOCAB.pad_id), seed).eval()


def _reference_embeds(lm, text: TextInputs, tok: Tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """``[T, H]`` input embeddings of one user's ``bos`` + items (+ a partial item), by hand."""
    embeds = lm.get_input_embeddings().weight[tokens].clone()
    for end in range(VOCAB.levels, len(tokens), VOCAB.levels):
        codes = VOCAB.decode_tokens(tokens[end - VOCAB.levels + 1:end + 1].numpy()[None])
        vector = torch.from_numpy(tok.reconstruct(codes)[0]).float()
        embeds[end] += text.proj.weight @ (vector / vector.norm())
    return embeds


def _reference_logits(lm, text, tok, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return lm(inputs_embeds=_reference_embeds(lm, text, tok, tokens)[None]).logits[0].float()


def _reference_logprobs(lm, text, tok, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``[C, L]`` log P of each candidate's tokens after ``history``, one full forward per candidate."""
    out = []
    for cand in candidates:
        seq = torch.as_tensor(np.concatenate([history, cand[:-1]]))
        logp = torch.log_softmax(_reference_logits(lm, text, tok, seq)[len(history) - 1:], -1)
        out.append(logp.gather(-1, torch.as_tensor(cand)[:, None])[:, 0].numpy())
    return np.array(out)


@pytest.fixture(scope="module")
def trained():
    """A tiny model whose text inputs have moved away from zero: the reference (plain) and the installed copy."""
    tok = _tokenizer()
    plain = _lm()
    text = _text_inputs(tok, std=0.5)
    model = install(copy.deepcopy(plain), text)
    return {"tok": tok, "plain": plain, "text": text, "model": model}


def _batch(users, seq_len: int = 64, rows: int = 2) -> dict:
    batch = make_batch(list(pack_rows([(u, 1) for u in users], seq_len)), rows, seq_len, VOCAB.pad_id)
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------- training

def test_untrained_text_inputs_leave_the_model_exactly_as_it_was():
    batch = _batch(_users(6, seed=1))
    args = (batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"])
    with torch.no_grad():
        without = TokenLossModel(_lm(), "sdpa", levels=VOCAB.levels)(*args)[0]
        with_text = TokenLossModel(_lm(), "sdpa", levels=VOCAB.levels, text_inputs=_text_inputs(_tokenizer()))(*args)[0]
    assert torch.equal(without, with_text)


def test_the_training_loss_is_the_reference_models_on_packed_users(trained):
    """Several users packed into rows (segments from ``cu_seqlens``): the summed token loss equals that of the
    hand-made reference run on each user alone."""
    users = _users(5, seed=2)
    batch = _batch(users)
    model = TokenLossModel(trained["plain"], "sdpa", levels=VOCAB.levels, text_inputs=trained["text"])
    with torch.no_grad():
        loss, n = model(batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"])
    expected = 0.0
    for u in users:
        logits = _reference_logits(trained["plain"], trained["text"], trained["tok"], torch.as_tensor(u))
        expected += float(torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(u[1:]), reduction="sum"))
    assert int(n) == sum(len(u) - 1 for u in users)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_an_items_vector_never_reaches_the_predictions_of_its_own_codes(trained):
    """Changing item t's vector leaves the logits of every position before item t's last token as they were (those
    predict item t's codes and earlier ones); from item t's last token on, the logits change."""
    text = trained["text"]
    user = torch.as_tensor(_users(1, seed=5, min_items=5)[0])
    t = 2
    end = t * VOCAB.levels                                 # position of item t's last token (items from 1)
    item = user[end - VOCAB.levels + 1:end + 1]
    real = text.item_vectors

    def shifted(tokens):                                   # item t's vector moved, every other item's as it was
        vectors = real(tokens)
        hit = (tokens == item).all(-1)
        return vectors + hit[:, None] * torch.linspace(-1, 1, vectors.shape[1])

    segments = torch.zeros_like(user)[None]

    def logits(vectors_fn):
        changed = TextInputs(TINY.hidden_size, DIM, VOCAB, vectors_fn)
        changed.load_state_dict(text.state_dict())
        embeds = changed(user[None], trained["plain"].get_input_embeddings()(user[None]), segments)
        with torch.no_grad():
            return trained["plain"](inputs_embeds=embeds).logits[0]

    before, after = logits(real), logits(shifted)
    torch.testing.assert_close(before[:end], after[:end], rtol=0, atol=0)
    assert (after[end:] - before[end:]).abs().amax(-1).min() > 1e-4


def test_the_projection_learns_and_the_loss_falls():
    model = TokenLossModel(_lm(), "sdpa", levels=VOCAB.levels, text_inputs=_text_inputs(_tokenizer()))
    model.train()
    batch = _batch(_users(12, seed=1), rows=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, n = model(batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"])
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(float(loss.detach() / n))
    assert model.text_inputs.proj.weight.abs().sum() > 0
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_option_is_a_model_config_key():
    cfg = load_train_config("tiny.json", ["model.text_inputs=runs/x/tokenizer"])
    assert cfg.model.text_inputs == "runs/x/tokenizer"
    assert load_train_config("tiny.json").model.text_inputs == ""


# ------------------------------------------------------------------------------------------------- scoring paths

def _eval_users(n: int = 5, seed: int = 3):
    rng = np.random.default_rng(seed)
    histories = _users(n, seed=seed)
    candidates = [VOCAB.encode_codes(rng.integers(0, VOCAB.codebook_size, size=(4, VOCAB.levels))) for _ in histories]
    return histories, candidates


@pytest.mark.parametrize("layout", ["batched", "cached", "naive"])
def test_every_candidate_scorer_layout_scores_like_the_reference(trained, layout):
    histories, candidates = _eval_users()
    model = trained["model"]
    if layout == "cached":
        got = [candidate_token_logprobs_fast(model, torch.as_tensor(h), torch.as_tensor(c), batch_size=3).numpy()
               for h, c in zip(histories, candidates)]
    else:
        scorer = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, mode="fast" if layout == "batched" else "naive",
                                 pad_id=VOCAB.pad_id)
        got = scorer.score_users(histories, candidates)
    for h, c, g in zip(histories, candidates, got):
        expected = _reference_logprobs(trained["plain"], trained["text"], trained["tok"], h, c)
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-4)
    # and the inputs matter: the plain model scores differently
    plain = CandidateScorer(trained["plain"], VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id)
    assert not np.allclose(plain.score_users(histories, candidates)[0], got[0], atol=1e-3)


def test_the_heads_history_states_are_the_reference_hidden_states(trained):
    histories, _ = _eval_users()
    got = history_states(trained["model"], histories, VOCAB.levels, VOCAB.bos_id, VOCAB.pad_id)
    for h, g in zip(histories, got):
        embeds = _reference_embeds(trained["plain"], trained["text"], trained["tok"], torch.as_tensor(h))
        with torch.no_grad():
            hidden = trained["plain"].model(inputs_embeds=embeds[None]).last_hidden_state[0, -1]
        torch.testing.assert_close(g, hidden, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beam_width", [1, 5])
def test_beam_search_one_user_and_batched_scores_like_the_reference(trained, beam_width):
    histories, _ = _eval_users(4, seed=7)
    codes = np.random.default_rng(0).integers(0, VOCAB.codebook_size, size=(30, VOCAB.levels))
    trie = CodeTrie.build(codes, [f"i{j}" for j in range(len(codes))], VOCAB.codebook_size)
    retriever = Retriever(trained["model"], trie, VOCAB.n_special, VOCAB.bos_id, beam_width=beam_width,
                          pad_id=VOCAB.pad_id)
    batched = retriever.retrieve_batch(histories)
    for h, found in zip(histories, batched):
        single = retriever.retrieve(h)
        assert single.items == found.items
        tuples = VOCAB.encode_codes(np.array([codes[int(item[1:])] for item in found.items]))
        expected = _reference_logprobs(trained["plain"], trained["text"], trained["tok"], h, tuples).sum(1)
        np.testing.assert_allclose(found.scores, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(single.scores, expected, rtol=1e-4, atol=1e-4)


def test_an_item_completed_in_a_cached_continuation_is_refused(trained):
    embedding = trained["model"].get_input_embeddings()
    assert isinstance(embedding, TextInputEmbedding)
    last_level = torch.as_tensor(VOCAB.encode_codes(np.zeros((1, VOCAB.levels), dtype=np.int64))[0, -1:])
    with pytest.raises(ValueError, match="without their earlier codes"):
        embedding(last_level[None])


# ------------------------------------------------------------------------------------------------- save and load

def _checkpoint_with_text_inputs(root: Path, tok_dir: Path, tok_hash: str, trained) -> Path:
    """A stage-0 checkpoint folder (what DeepSpeed writes without ZeRO: one file holding the whole training
    module) of the trained model, written with the checkpoint module's own functions."""
    state = {f"lm.{k}": v for k, v in trained["plain"].state_dict().items()}
    state.update({f"text_inputs.{k}": v for k, v in trained["text"].state_dict().items()})
    partial = ckpt.begin(root / "ckpt", 3)
    torch.save({"module": state}, partial / "mp_rank_00_model_states.pt")
    meta = {"step": 3, "tokenizer_hash": tok_hash, "model_config": trained["plain"].config.to_dict(),
            "vocab": VOCAB.to_dict(), "train_config": {"model": {"text_inputs": str(tok_dir)},
                                                       "checkpoint": {"dir": str(root / "ckpt")}}}
    (partial / ckpt.META_FILE).write_text(json.dumps(meta))
    return ckpt.publish(root / "ckpt", 3)


def test_the_export_and_the_checkpoint_load_with_their_text_inputs(trained, tmp_path):
    from recbase.recommend import Recommender

    tok_dir = tmp_path / "tokenizer"
    tok_hash = trained["tok"].save(tok_dir)
    folder = _checkpoint_with_text_inputs(tmp_path, tok_dir, tok_hash, trained)
    out = export_hf(folder, tmp_path / "hf")
    assert (out / TEXT_INPUTS_FILE).exists()
    histories, candidates = _eval_users()
    expected = CandidateScorer(trained["model"], VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id).score_users(
        histories, candidates)
    for path in (out, folder):
        model, _ = load_model(path)
        assert isinstance(model.get_input_embeddings(), TextInputEmbedding)
        got = CandidateScorer(model, VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id).score_users(histories,
                                                                                                   candidates)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    # the tokenizer folder the training config names has moved: the recommender passes its own
    moved = tmp_path / "moved"
    tok_dir.rename(moved)
    with pytest.raises(UserError, match="pass the tokenizer artifact"):
        load_model(out)
    rec = Recommender.from_pretrained(out, moved, device="cpu")
    got = CandidateScorer(rec.model.model, VOCAB.levels, VOCAB.bos_id, pad_id=VOCAB.pad_id).score_users(
        histories, candidates)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    other = tmp_path / "other"
    _tokenizer(seed=1).save(other)
    with pytest.raises(UserError, match="its text inputs cannot come from tokenizer"):
        load_model(out, tokenizer=other)


@pytest.mark.slow
def test_the_demo_pipeline_trains_exports_fine_tunes_and_scores_with_text_inputs(tmp_path):
    """Text inputs through the real trainer (ZeRO-3), its checkpoint and export, fine-tuning and evaluation."""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from test_demo import TINY

    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "recbase.cli", "demo", "--out", str(out), *TINY, "text_inputs=true"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pretrained = load_file(str(out / "run" / "hf" / TEXT_INPUTS_FILE))["proj.weight"]
    finetuned = load_file(str(out / "run" / "finetune" / "hf" / TEXT_INPUTS_FILE))["proj.weight"]
    assert pretrained.abs().sum() > 0 and not torch.equal(pretrained, finetuned)   # trained, then fine-tuned on
    model, meta = load_model(out / "run" / "hf")
    assert isinstance(model.get_input_embeddings(), TextInputEmbedding)
    assert meta["train_config"]["model"]["text_inputs"] == str(out / "tokenizer")
    from_ckpt, _ = load_model(out / "run" / "checkpoints")
    vocab = Vocab.from_dict(meta["vocab"])
    codes = np.random.default_rng(0).integers(0, vocab.codebook_size, size=(3, vocab.levels))
    probe = torch.as_tensor(np.concatenate([[vocab.bos_id], vocab.encode_codes(codes).ravel()]))[None]
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(input_ids=probe).logits, model(input_ids=probe).logits)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert all(0.0 <= r["auc"] <= 1.0 for s in metrics["domains"].values() for r in s["models"].values())
