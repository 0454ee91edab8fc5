"""The next-item text-embedding head: its targets, no leak of the target item, its loss falls, and its evaluation
score comes from the history alone."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from eval_helpers import build_world, save_export, tiny_model, write_eval_set
from recbase.data.loader import make_batch, pack_rows
from recbase.eval.job import EvalConfig, evaluate
from recbase.tokenizer.artifact import Tokenizer
from recbase.train.config import ModelConfig, load_train_config
from recbase.eval.head_score import history_layout
from recbase.train.embedding_head import (HISTORY_WINDOW, EmbeddingHead, ItemVectors, history_features, next_item_targets,
                                          piecewise_linear)
from recbase.train.export import HEAD_FILE
from recbase.train.model import EmbeddingTarget, TokenLossModel, build_model, qwen2_config, segment_ids
from recbase.vocab import Vocab

VOCAB = Vocab(levels=3, codebook_size=8)
DIM = 16
TINY = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def _tokenizer(seed: int = 0) -> Tokenizer:
    """A real RQ-Kmeans artifact with seeded codebooks: an item's vector is the sum of its codewords."""
    g = torch.Generator().manual_seed(seed)
    return Tokenizer(kind="rqkmeans", levels=VOCAB.levels, codebook_size=VOCAB.codebook_size, input_dim=DIM,
                     embedder="test", normalization="center",
                     codebooks=torch.randn(VOCAB.levels, VOCAB.codebook_size, DIM, generator=g))


def _users(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.concatenate([[VOCAB.bos_id], VOCAB.encode_codes(
        rng.integers(0, VOCAB.codebook_size, size=(int(rng.integers(2, 7)), VOCAB.levels))).ravel()])
        for _ in range(n)]


def _batch(segments, seq_len: int = 64, rows: int = 3) -> dict:
    packed = list(pack_rows(segments, seq_len))
    batch = make_batch(packed, rows, seq_len, VOCAB.pad_id)
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_targets_are_the_next_items_reconstruction_after_the_mean_of_the_items_before():
    tok = _tokenizer()
    users = _users(6)
    batch = _batch([(u, 1) for u in users])
    b, s = batch["input_ids"].shape
    found = next_item_targets(batch["input_ids"], batch["labels"], segment_ids(batch["cu_seqlens"], b, s), VOCAB,
                              ItemVectors(tok, VOCAB))
    expected_targets, expected_means = [], []
    for u in sorted(users, key=lambda u: _first_index(batch, u)):
        vectors = _unit(tok.reconstruct(VOCAB.decode_tokens(u[1:].reshape(-1, VOCAB.levels))))
        for t in range(len(vectors) - 1):
            expected_means.append(vectors[:t + 1].mean(0))
            expected_targets.append(vectors[t + 1])
    np.testing.assert_allclose(found["target"].numpy(), np.array(expected_targets), atol=1e-5)
    np.testing.assert_allclose(_history_means(found), np.array(expected_means), atol=1e-5)
    flat = batch["input_ids"].reshape(-1)
    levels = (flat[found["positions"]] - VOCAB.n_special) // VOCAB.codebook_size
    assert (levels == VOCAB.levels - 1).all()   # predicted from the last token of an item


def _history_means(found) -> np.ndarray:
    allowed = found["allowed"].float()
    return ((allowed @ found["vectors"]) / allowed.sum(1, keepdim=True)).numpy()


def _first_index(batch, user) -> int:
    flat = batch["input_ids"].reshape(-1).numpy()
    for i in range(len(flat) - len(user) + 1):
        if (flat[i:i + len(user)] == user).all():
            return i
    raise AssertionError("user not in the batch")


def test_a_chunk_cut_inside_an_item_skips_that_item():
    tok = _tokenizer()
    user = _users(1, seed=3)[0]
    items = len(user) // VOCAB.levels
    cut = user[2:]                      # starts with the last L-1 tokens of item 1, then items 2..n
    batch = _batch([(cut, 1)])
    b, s = batch["input_ids"].shape
    found = next_item_targets(batch["input_ids"], batch["labels"], segment_ids(batch["cu_seqlens"], b, s), VOCAB,
                              ItemVectors(tok, VOCAB))
    assert len(found["target"]) == items - 2   # items 2..n, each but the last predicting the next
    vectors = _unit(tok.reconstruct(VOCAB.decode_tokens(user[1:].reshape(-1, VOCAB.levels))))
    np.testing.assert_allclose(_history_means(found)[0], vectors[1], atol=1e-5)
    assert found["distance"][0][found["allowed"][0]].tolist() == [0]


def test_history_features_of_a_hand_built_history():
    # one user, items a, b, c in time order (c latest); d belongs to another user
    a, b, c, d = [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 3.0, 0.0], [0.0, 0.0, 1.0]
    vectors = torch.tensor([a, b, c, d])
    allowed = torch.tensor([[True, True, True, False]])
    distance = torch.tensor([[2, 1, 0, -7]])
    got = history_features(vectors, allowed, distance)[0, :3]
    r = 2 ** -0.5
    # unit vectors a=(1,0,0), b=(0,1,0), c=(r,r,0); their mean (1+r, 1+r, 0)/3 points along (r, r, 0)
    expected = [[r, r, -1.0],     # a: cos with c, cos with the mean, the first of three
                [r, r, 0.0],      # b
                [1.0, 1.0, 1.0]]  # c, the latest
    torch.testing.assert_close(got, torch.tensor(expected))
    single = history_features(vectors[:1], torch.tensor([[True]]), torch.tensor([[0]]))
    torch.testing.assert_close(single, torch.tensor([[[1.0, 1.0, 1.0]]]))   # a one-item history: its latest


def test_a_feature_function_is_linear_between_its_knots():
    values = torch.zeros(2, 5)          # knots at -1, -0.5, 0, 0.5, 1
    values[0, 2], values[0, 3] = 1.0, 3.0
    values[1, 4] = 10.0
    x = torch.tensor([[0.25, 0.0], [0.5, 0.75], [-3.0, 1.0]])   # out of range: the end knot's value
    torch.testing.assert_close(piecewise_linear(values, x), torch.tensor([2.0 + 0.0, 3.0 + 5.0, 0.0 + 10.0]))


def test_training_and_scoring_lay_out_the_same_history_features():
    """The prediction after each user's last history item gets the same features from the training batch (items
    found in packed rows) as from the evaluation layout (histories concatenated per user), given the same vectors."""
    tok = _tokenizer()
    users = _users(5, seed=2)
    batch = _batch([(u, 1) for u in users])
    b, s = batch["input_ids"].shape
    item_vectors = ItemVectors(tok, VOCAB)
    found = next_item_targets(batch["input_ids"], batch["labels"], segment_ids(batch["cu_seqlens"], b, s), VOCAB,
                              item_vectors)
    train = history_features(found["vectors"], found["allowed"], found["distance"])
    order = sorted(users, key=lambda u: _first_index(batch, u))
    histories = [item_vectors(torch.as_tensor(u[1:-VOCAB.levels]).reshape(-1, VOCAB.levels)) for u in order]
    allowed, distance = history_layout([len(h) for h in histories])
    score = history_features(torch.cat(histories), allowed, distance)
    # the training batch's last prediction of each user is the one after its second-to-last item
    last = [int(i) for i in np.flatnonzero(np.diff(np.append(found["group"].numpy(), -1)))]
    assert len(last) == len(order)
    for user, row in enumerate(last):
        torch.testing.assert_close(train[row][found["allowed"][row]], score[user][allowed[user]])


def _model(loss: str = "cosine", kind: str = "linear", seed: int = 0) -> TokenLossModel:
    torch.manual_seed(seed)
    lm = build_model(qwen2_config(TINY, VOCAB.model_vocab_size), seed)
    return TokenLossModel(lm, "sdpa", levels=VOCAB.levels,
                          embedding_head=EmbeddingTarget(VOCAB, ItemVectors(_tokenizer(), VOCAB), loss, kind=kind))


def _randomise(head: EmbeddingHead) -> EmbeddingHead:
    """Move the head away from its start at the bar's profile."""
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(std=0.5)
    return head


@pytest.mark.parametrize("kind", ["linear", "attention", "features"])
def test_a_prediction_never_sees_the_item_it_predicts(kind):
    model = _model(kind=kind)
    _randomise(model.embedding_head)
    user = _users(1, seed=5)[0]
    changed = user.copy()
    changed[1 + 2 * VOCAB.levels:] = VOCAB.encode_codes(np.zeros((len(user) // VOCAB.levels - 2, VOCAB.levels),
                                                                 dtype=np.int64)).ravel()   # items 3.. replaced

    def predictions(tokens):
        batch = _batch([(tokens, 1)], rows=1)
        b, s = batch["input_ids"].shape
        found = next_item_targets(batch["input_ids"], batch["labels"], segment_ids(batch["cu_seqlens"], b, s),
                                  VOCAB, model.embedding.item_vectors)
        hidden = model.lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).last_hidden_state
        return model.embedding_head(hidden.reshape(b * s, -1)[found["positions"]], found["vectors"],
                                    found["allowed"], found["distance"])

    with torch.no_grad():
        before, after = predictions(user), predictions(changed)
    # the prediction after item 2 (of item 3) is the same whatever items 3.. are; later ones change
    torch.testing.assert_close(before[:2], after[:2])
    assert not torch.allclose(before[2:], after[2:])


@pytest.mark.parametrize("kind", ["linear", "attention", "features"])
def test_the_head_looks_at_the_latest_window_of_items_only(kind):
    """Items further back than HISTORY_WINDOW change no prediction, in training and scoring alike (both lay the
    history out for the same forward); the oldest item inside the window does."""
    torch.manual_seed(0)
    head = _randomise(EmbeddingHead(TINY.hidden_size, 8, kind))
    n = HISTORY_WINDOW + 5
    vectors = torch.nn.functional.normalize(torch.randn(n, 8), dim=-1)
    allowed, distance = history_layout([n])
    hidden = torch.randn(1, TINY.hidden_size)

    def predict(v):
        with torch.no_grad():
            return head(hidden, v, allowed, distance)

    outside, inside = vectors.clone(), vectors.clone()
    outside[:5] = -outside[:5]                        # items HISTORY_WINDOW.. back (oldest first)
    inside[5] = -inside[5]                            # the item HISTORY_WINDOW - 1 back
    torch.testing.assert_close(predict(outside), predict(vectors))
    assert not torch.allclose(predict(inside), predict(vectors))


@pytest.mark.parametrize("loss,kind", [("cosine", "linear"), ("contrastive", "linear"), ("cosine", "attention"),
                                       ("cosine", "features")])
def test_the_head_loss_falls_with_training(loss, kind):
    model = _model(loss, kind)
    batch = _batch([(u, 1) for u in _users(12, seed=1)], seq_len=64, rows=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        total, _ = model(batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"])
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(model.embedding_stats[0] / model.embedding_stats[1])
    assert model.embedding_stats[1] > 0
    # the attention head can only re-weight each user's own items, so its loss has less room to fall
    assert losses[-1] < (0.8 if kind == "linear" else 0.95) * losses[0], losses


def test_embedding_options_are_checked():
    cfg = load_train_config("tiny.json", ["model.embedding_loss=contrastive", "model.embedding_weight=2"])
    assert cfg.model.embedding_loss == "contrastive" and cfg.model.embedding_weight == 2
    with pytest.raises(Exception, match="model.embedding_loss"):
        load_train_config("tiny.json", ["model.embedding_loss=mse"])
    assert load_train_config("tiny.json", ["model.embedding_head_kind=features"]).model.embedding_head_kind == "features"
    with pytest.raises(Exception, match=re.escape("'mlp' is not linear | attention | features")):
        load_train_config("tiny.json", ["model.embedding_head_kind=mlp"])


# ------------------------------------------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("head-world")
    w = build_world(root, VOCAB)
    for name, kind, trained in (("head_model", "linear", True), ("zero_head_model", "linear", False),
                                ("attention_model", "attention", True), ("zero_attention_model", "attention", False),
                                ("features_model", "features", True), ("zero_features_model", "features", False)):
        folder = root / name
        folder.mkdir()
        head = EmbeddingHead(32, DIM, kind)
        head = _randomise(head) if trained else head
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_FILE))
        w[name] = save_export(tiny_model(VOCAB), VOCAB, "tok-abc", folder,
                              train_config={"model": {"embedding_head": "tokenizer"}})
    return w


def _evaluate(world, model: str, out, eval_dir=None, codes=None) -> tuple[dict, dict]:
    cfg = EvalConfig(models={"m": str(world[model])}, eval_dir=str(eval_dir or world["eval_dir"]),
                     data_dir=str(world["data_dir"]), embeddings_dir=str(world["embeddings_dir"]),
                     codes=str(codes or world["codes"]), out_dir=str(out), retrieval=False)
    results = evaluate(cfg)
    return results["domains"]["books"], pq.read_table(out / "pairs" / "books.parquet").to_pydict()


@pytest.mark.parametrize("model", ["zero_head_model", "zero_attention_model", "zero_features_model"])
def test_an_untrained_head_scores_exactly_like_the_centred_text_similarity(world, tmp_path, model):
    section, pairs = _evaluate(world, model, tmp_path / "out")
    np.testing.assert_allclose(pairs["m/head"], pairs["text_centred"], atol=1e-5)
    assert section["models"]["m"]["auc_head"] == pytest.approx(section["baselines"]["text_centred"]["auc"])


@pytest.mark.parametrize("model", ["head_model", "attention_model", "features_model"])
def test_the_head_score_ignores_the_candidates_codes(world, tmp_path, model):
    section, pairs = _evaluate(world, model, tmp_path / "a")
    assert {"auc_head", "auc_head_fused", "gauc_head"} <= set(section["models"]["m"])
    report = (tmp_path / "a" / "report.md").read_text()
    assert "m AUC (embedding head)" in report and "m PMI + head − bar" in report   # the adopted score with a head
    assert not np.allclose(pairs["m/head"], pairs["text_centred"])
    rows = [dict(r) for r in world["rows"]]
    for r in rows:   # every candidate's deeper codes replaced
        r["candidate_tokens"] = [[t[0]] + VOCAB.encode_codes([[0] * VOCAB.levels])[0, 1:].tolist()
                                 for t in r["candidate_tokens"]]
    eval_dir = tmp_path / "changed" / "eval"
    write_eval_set(eval_dir / "books.parquet", rows, "tok-abc")
    codes = pq.read_table(world["codes"])   # the catalog changed the same way, as evaluate checks the two agree
    deeper_zero = [[c[0]] + [0] * (VOCAB.levels - 1) for c in codes["codes"].to_pylist()]
    codes = codes.set_column(codes.schema.get_field_index("codes"), "codes",
                             pa.array(deeper_zero, codes.schema.field("codes").type))
    pq.write_table(codes, tmp_path / "changed" / "codes.parquet")
    _, changed = _evaluate(world, model, tmp_path / "b", eval_dir, tmp_path / "changed" / "codes.parquet")
    np.testing.assert_allclose(changed["m/head"], pairs["m/head"], atol=1e-6)
    assert not np.allclose(changed["m/logp_1"], pairs["m/logp_1"])   # the token scores did see the change


def test_the_head_gets_its_own_learning_rate():
    from recbase.train.optim import param_groups

    model = _model(kind="attention")
    groups = param_groups(model, 0.1, {model.embedding_head: (1e-3, 10.0)})
    head = {id(p) for p in model.embedding_head.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= head if g.get("lr") == pytest.approx(1e-2) else not ids & head
    assert sum(len(g["params"]) for g in groups) == len({id(p) for p in model.parameters()})


@pytest.mark.parametrize("preset", ["zeroshot_fold_a.json", "zeroshot_fold_b.json"])
def test_the_fold_presets_parse_and_can_train_the_head(preset):
    from recbase.pipeline import load_pipeline_config

    cfg = load_pipeline_config(preset, ["embedding_head=true"])
    assert cfg.embedding_head and cfg.heldout_domains and not set(cfg.heldout_domains) & set(cfg.pretrain_domains)
    load_train_config(cfg.train_config, ["model.embedding_head=tokenizer", *cfg.train_overrides])


@pytest.mark.slow
def test_the_demo_pipeline_trains_exports_fine_tunes_and_scores_the_head(tmp_path):
    """The head through the real trainer (ZeRO-3), its export, fine-tuning and evaluation."""
    import json
    import subprocess
    import sys

    from test_demo import TINY

    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "recbase.cli", "demo", "--out", str(out), *TINY,
                          "embedding_head=true"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "run" / "hf" / HEAD_FILE).exists() and (out / "run" / "finetune" / "hf" / HEAD_FILE).exists()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    for section in metrics["domains"].values():
        for result in section["models"].values():
            assert 0.0 <= result["auc_head"] <= 1.0 and 0.0 <= result["auc_head_fused"] <= 1.0
    logged = [json.loads(line) for line in (out / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any("embedding_loss" in r for r in logged)
    assert "PMI + head" in run.stdout   # the terminal table
