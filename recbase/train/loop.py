"""The training loop shared by pretraining and fine-tuning.

One optimizer step reads ``gradient_accumulation_steps`` micro-batches on every data-parallel rank. The loss
of the step is the sum of token losses over all of them divided by the all-reduced count of label tokens, so
each label token weighs the same whatever the packing, the micro-batch split or the number of ranks: 2 ranks
and 1 rank with the same global batch give the same curve.
"""
from __future__ import annotations

import itertools
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recbase.config import to_dict
from recbase.data.shard_format import read_manifest
from recbase.errors import UserError
from recbase.train import checkpoint as ckpt
from recbase.train import engine as ds
from recbase.train.config import TrainConfig
from recbase.train.estimates import mfu, model_size, peak_flops
from recbase.train.metrics import MetricsLogger
from recbase.train.embedding_head import ItemVectors
from recbase.train.model import (EmbeddingTarget, TokenLossModel, add_dropout, build_model, init_code_embeddings,
                                 load_weights, qwen2_config, resolve_attention)
from recbase.train.optim import lr_factor, param_groups
from recbase.train.text_inputs import TextInputs

BATCH_TENSORS = ("input_ids", "labels", "position_ids", "cu_seqlens")


@dataclass
class TrainResult:
    step: int                    # last optimizer step done
    checkpoint: Path | None      # last checkpoint folder
    export: Path | None          # Hugging Face export folder (rank 0 only)
    losses: dict[int, float]     # training loss per step run by this process


def _rng_state() -> dict:
    """All generators' states as tensors and plain values, so the file loads weights-only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in BATCH_TENSORS}


def _make_loader(cfg: TrainConfig, runtime: ds.Runtime, split: str, **kwargs):
    from recbase.data.loader import PackedLoader

    return PackedLoader(cfg.data.shards, split=split, seq_len=cfg.data.seq_len,
                        micro_batch_size=cfg.optim.micro_batch_size, rank=runtime.dp_rank,
                        world_size=runtime.dp_world, num_workers=cfg.data.num_workers, seed=cfg.seed,
                        expected_tokenizer_hash=expected_tokenizer_hash(cfg), packed=cfg.data.packed, **kwargs)


def expected_tokenizer_hash(cfg: TrainConfig) -> str | None:
    """The tokenizer the shards must come from: ``data.tokenizer_hash``, and when fine-tuning the one the initial
    weights were trained with (concept ids of another tokenizer mean nothing to them)."""
    configured = cfg.data.tokenizer_hash
    if not cfg.checkpoint.init_from:
        return configured
    from recbase.train.export import load_meta

    trained = load_meta(cfg.checkpoint.init_from).get("tokenizer_hash")
    if configured and trained and configured != trained:
        raise UserError(f"data.tokenizer_hash={configured} but {cfg.checkpoint.init_from} was trained with "
                        f"tokenizer {trained}")
    return configured or trained


def _add_embedding_stats(model, head_sum: float, head_n: int) -> tuple[float, int]:
    """Add the embedding head's loss and prediction count of the forward just run (nothing without a head)."""
    if model.embedding_head is None:
        return head_sum, head_n
    loss, n = model.embedding_stats
    return head_sum + loss, head_n + n


def _embedding_metrics(model, head_sum: float, head_n: float, loss_sum: float, labels: float) -> dict:
    """With an embedding head, ``loss`` includes its weighted loss: the log also gets the token loss alone
    (comparable with a run without the head) and the head's mean loss per predicted item."""
    if model.embedding_head is None:
        return {}
    token_sum = loss_sum - model.embedding.weight * head_sum
    return {"token_loss": token_sum / max(labels, 1.0), "embedding_loss": head_sum / max(head_n, 1.0),
            "embedding_predictions": head_n}


def _has_split(loader, split: str) -> bool:
    return bool(split) and any(s["split"] == split for s in loader.manifest["shards"])


class Trainer:
    """Builds the model and engine for a config and runs it; :func:`pretrain` is the usual entry."""

    def __init__(self, cfg: TrainConfig, loader=None):
        """``loader`` replaces the training ``PackedLoader`` (same interface: iteration, ``vocab``, ``manifest``,
        ``state_dict``/``load_state_dict``), e.g. to feed one process what several ranks would read."""
        self.cfg = cfg
        # refuse shards of another tokenizer, and a checkpoint of another one, before any process group or
        # model exists
        manifest = read_manifest(cfg.data.shards, expected_tokenizer_hash(cfg))
        cfg.check_seq_len(manifest["vocab"]["levels"])
        self.resume_from = self._resume_target(manifest["tokenizer_hash"])
        if self.export_dir is not None:
            from recbase.train.export import check_replaceable

            check_replaceable(self.export_dir, own_checkpoints=cfg.checkpoint.dir)
        self.runtime = rt = ds.setup_runtime(cfg)
        torch.manual_seed(cfg.seed)
        self.loader = loader if loader is not None else _make_loader(cfg, rt, cfg.data.train_split)
        self.vocab = self.loader.vocab
        self.tokenizer_hash = self.loader.manifest["tokenizer_hash"]
        self.train_domains = sorted(d for d, splits in self.loader.manifest["domains"].items()
                                    if cfg.data.train_split in splits)
        vocab_size = cfg.model.vocab_size or self.vocab.model_vocab_size
        if vocab_size < self.vocab.n_tokens:
            raise UserError(f"model.vocab_size={vocab_size} is smaller than the {self.vocab.n_tokens} token ids "
                            f"of the shard vocabulary ({cfg.data.shards}/manifest.json)")
        attention = resolve_attention(cfg.model.attention, rt.device.type, cfg.model.attention_pattern)
        self.hf_config = qwen2_config(cfg.model, vocab_size, attention, pad_token_id=self.vocab.pad_id)
        self.size = model_size(self.hf_config)
        if self.resume_from is not None:
            ckpt.check_model_config(self.resume_from, self.hf_config.to_dict())
        self.ds_config = ds.deepspeed_config(cfg, rt, cfg.model.hidden_size)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        with ds.model_construction(self.ds_config):
            lm = build_model(self.hf_config, cfg.seed, gather=ds.gathered)
            if cfg.model.code_init:
                self._init_code_embeddings(lm, cfg)
            if cfg.checkpoint.init_from:
                from recbase.train.export import load_state

                state, _ = load_state(cfg.checkpoint.init_from)
                load_weights(lm, state, gather=ds.gathered)
        add_dropout(lm, cfg.model.dropout)
        if cfg.model.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = TokenLossModel(lm, attention, cfg.model.attention_pattern, self.vocab.levels,
                               cfg.model.fused_linear_ce, self._embedding_target(cfg), self._text_inputs(cfg))
        if model.embedding_head is not None and cfg.checkpoint.init_from:
            from recbase.train.export import load_head_state

            head = load_head_state(cfg.checkpoint.init_from)   # fine-tuning continues the pretrained head
            if head is not None:
                model.embedding_head.load_state_dict(head)
        if cfg.model.embedding_head_recency:   # fitted listwise beforehand, kept fixed
            from recbase.train.head_recency import fix_recency

            fix_recency(model.embedding_head, cfg.model.embedding_head_recency)
        if model.text_inputs is not None and cfg.checkpoint.init_from:
            from recbase.train.export import load_text_inputs_state

            projection = load_text_inputs_state(cfg.checkpoint.init_from)   # and the pretrained text inputs
            if projection is not None:
                model.text_inputs.load_state_dict(projection)
        scales = ({model.embedding_head: (cfg.optim.lr, cfg.model.embedding_lr_scale)}
                  if model.embedding_head is not None else None)
        self.engine = ds.initialize(cfg, rt, model, param_groups(model, cfg.optim.weight_decay, scales),
                                    lambda s: lr_factor(s, cfg.optim), self.ds_config)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._resume()
        self.valid_batches = self._valid_batches()
        self.log = MetricsLogger(cfg.logging.dir, rt.is_main, cfg.logging.tensorboard)
        device_name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else None
        self.peak = peak_flops(device_name, cfg.logging.peak_tflops)

    # ---------------------------------------------------------------------------------------------- state

    def _shards_tokenizer(self, key: str, path: str):
        """The tokenizer artifact at ``path`` (config key ``key``), which must be the one the shards were made
        with."""
        from recbase.tokenizer.artifact import load_tokenizer

        tok = load_tokenizer(path)
        if tok.hash != self.tokenizer_hash:
            raise UserError(f"{key}={path}: tokenizer hash {tok.hash[:12]} is not the shards' "
                            f"{self.tokenizer_hash[:12]} ({self.cfg.data.shards}/manifest.json)")
        return tok

    def _embedding_target(self, cfg: TrainConfig) -> EmbeddingTarget | None:
        """The next-item embedding head's training setup, when ``model.embedding_head`` names the tokenizer."""
        m = cfg.model
        if not m.embedding_head:
            return None
        tok = self._shards_tokenizer("model.embedding_head", m.embedding_head)
        return EmbeddingTarget(self.vocab, ItemVectors(tok, self.vocab), m.embedding_loss, m.embedding_weight,
                               m.embedding_temperature, m.embedding_head_kind)

    def _text_inputs(self, cfg: TrainConfig) -> TextInputs | None:
        """The items' text vectors as inputs, when ``model.text_inputs`` names the tokenizer."""
        if not cfg.model.text_inputs:
            return None
        tok = self._shards_tokenizer("model.text_inputs", cfg.model.text_inputs)
        vectors = ItemVectors(tok, self.vocab)
        return TextInputs(cfg.model.hidden_size, vectors.dim, self.vocab, vectors)

    def _init_code_embeddings(self, lm, cfg: TrainConfig) -> None:
        """Concept-token embeddings from the codebooks of the tokenizer the shards were made with (its hash
        must be the shards' one)."""
        tok = self._shards_tokenizer("model.code_init", cfg.model.code_init)
        if tok.codebooks is None:
            raise UserError(f"model.code_init={cfg.model.code_init}: a {tok.kind} tokenizer has no codebooks")
        if tok.levels != self.vocab.levels or tok.codebook_size != self.vocab.codebook_size:
            raise UserError(f"model.code_init={cfg.model.code_init}: {tok.levels} x {tok.codebook_size} codes, the "
                            f"shards have {self.vocab.levels} x {self.vocab.codebook_size}")
        init_code_embeddings(lm, tok.codebooks, self.vocab.n_special, cfg.seed, cfg.model.init_std, ds.gathered)

    def _resume_target(self, tokenizer_hash: str) -> Path | None:
        """The checkpoint to resume from, checked against this run's tokenizer; says which one it picked and
        why."""
        target = self.cfg.checkpoint.resume
        if target == "none":
            return None
        folder, why = ckpt.resolve(self.cfg.checkpoint.dir if target == "auto" else target)
        if folder is None:
            if target != "auto":
                raise UserError(f"checkpoint.resume={target}: {why}")
            return None
        ckpt.check_tokenizer(folder, tokenizer_hash)
        ckpt.check_init(folder, self.cfg.checkpoint.init_from)
        if int(os.environ.get("RANK", "0")) == 0:
            tqdm.write(f"resuming from {folder} ({why})")
        return folder

    def _resume(self) -> None:
        if self.resume_from is None:
            return
        self.step, state = ds.load_checkpoint(self.engine, self.runtime, self.resume_from)
        self.loader.load_state_dict(state["loader"])
        _set_rng_state(state["rng"])
        self.last_checkpoint = self.resume_from
        if self.runtime.is_main:
            tqdm.write(f"resumed from {self.resume_from} at step {self.step}")

    def meta(self) -> dict:
        """What a checkpoint or export needs to be used without the training config at hand: which tokenizer
        (kind, embedder, the domains it was trained on) made the ids, how ids map to concept codes, and the
        domains the model was trained on (an evaluation on any of them is not zero-shot)."""
        tokenizer = {**self.loader.manifest.get("tokenizer", {}), "hash": self.tokenizer_hash}
        init = self.cfg.checkpoint.init_from
        return {"step": self.step, "tokenizer_hash": self.tokenizer_hash, "tokenizer": tokenizer,
                "token_layout": self.vocab.layout(), "vocab": self.vocab.to_dict(),
                "train_domains": self.train_domains, "model_config": self.hf_config.to_dict(),
                "attention_pattern": self.cfg.model.attention_pattern, "train_config": to_dict(self.cfg),
                **({"init_weights": ckpt.weights_identity(init)} if init else {})}

    def save(self) -> Path:
        rank_state = {"loader": self.loader.state_dict(), "rng": _rng_state()}
        self.last_checkpoint = ds.save_checkpoint(self.engine, self.runtime, self.cfg.checkpoint.dir, self.step,
                                                  rank_state, self.meta())
        return self.last_checkpoint

    # ---------------------------------------------------------------------------------------------- steps

    def train_step(self, batches: list[dict]) -> dict:
        """One optimizer step over this rank's micro-batches; returns the global loss and token counts."""
        rt = self.runtime
        local_labels = sum(b["n_label_tokens"] for b in batches)
        # tensor-parallel ranks share their batch (and their loss): count it once
        (global_labels,) = ds.all_reduce_sum([local_labels / rt.tensor_parallel], rt.device)
        # DeepSpeed divides by the accumulation steps and averages over data-parallel ranks; undo both so the
        # gradient is d(sum of token losses) / (global label count).
        scale = self.gas * rt.dp_world / max(global_labels, 1.0)
        loss_sum, head_sum, head_n = 0.0, 0.0, 0
        for batch in batches:
            loss, _ = self.engine(**_to_device(batch, rt.device))
            self.engine.backward(loss * scale)
            self.engine.step()
            loss_sum += loss.item()
            head_sum, head_n = _add_embedding_stats(self.engine.module, head_sum, head_n)
        global_loss, head_sum, head_n = ds.all_reduce_sum(
            [loss_sum / rt.tensor_parallel, head_sum / rt.tensor_parallel, head_n / rt.tensor_parallel], rt.device)
        grad_norm = self.engine.get_global_grad_norm()
        out = {"loss": global_loss / max(global_labels, 1.0), "label_tokens": global_labels,
               "grad_norm": float(grad_norm) if grad_norm is not None else None}
        return {**out, **_embedding_metrics(self.engine.module, head_sum, head_n, global_loss, global_labels)}

    def _valid_batches(self) -> list[dict]:
        split = self.cfg.data.valid_split
        if not _has_split(self.loader, split) or self.cfg.logging.valid_batches <= 0:
            return []
        loader = _make_loader(self.cfg, self.runtime, split, num_epochs=1)
        batches = list(itertools.islice(iter(loader), self.cfg.logging.valid_batches))
        # every rank must run the same number of forwards (ZeRO-3 gathers are collective)
        return batches[:ds.all_reduce_min(len(batches), self.runtime.device)]

    @torch.no_grad()
    def validate(self) -> dict | None:
        if not self.valid_batches:
            return None
        self.engine.eval()
        loss_sum = labels = head_sum = 0.0
        head_n = 0
        for batch in self.valid_batches:
            loss, n = self.engine(**_to_device(batch, self.runtime.device))
            loss_sum += loss.item()
            labels += float(n)
            head_sum, head_n = _add_embedding_stats(self.engine.module, head_sum, head_n)
        self.engine.train()
        tp = self.runtime.tensor_parallel
        total, count, head_sum, head_n = ds.all_reduce_sum([loss_sum / tp, labels / tp, head_sum / tp, head_n / tp],
                                                           self.runtime.device)
        return {"loss": total / max(count, 1.0), "label_tokens": count,
                **_embedding_metrics(self.engine.module, head_sum, head_n, total, count)}

    def run(self) -> TrainResult:
        cfg, rt = self.cfg, self.runtime
        o, lg = cfg.optim, cfg.logging
        tokens_per_step = self.gas * o.micro_batch_size * cfg.data.seq_len * rt.dp_world
        flops_per_token = self.size.flops_per_token(cfg.data.seq_len)
        losses: dict[int, float] = {}
        data = iter(self.loader)
        bar = tqdm(total=o.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (rt.is_main and lg.progress))
        self.engine.train()
        # throughput counts data loading and the step, not validation or checkpointing
        window_time, window_tokens, window_labels = 0.0, 0, 0.0
        while self.step < o.max_steps:
            start = time.perf_counter()
            batches = [next(data) for _ in range(self.gas)]
            lr = self.engine.get_lr()[0]
            out = self.train_step(batches)
            window_time += time.perf_counter() - start
            self.step += 1
            losses[self.step] = out["loss"]
            window_tokens += tokens_per_step
            window_labels += out["label_tokens"]
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}")
            if self.step % lg.every_steps == 0 or self.step == o.max_steps:
                tps = window_tokens / window_time
                self.log.log(self.step, "train", {
                    **{k: out[k] for k in ("token_loss", "embedding_loss") if k in out},
                    "loss": out["loss"], "lr": lr, "grad_norm": out["grad_norm"], "tokens_per_s": tps,
                    "label_tokens_per_s": window_labels / window_time,
                    "mfu": mfu(flops_per_token, tps, rt.world_size, self.peak)})
                window_time, window_tokens, window_labels = 0.0, 0, 0.0
            if self.step == o.max_steps or (lg.valid_every_steps and self.step % lg.valid_every_steps == 0):
                valid = self.validate()
                if valid is not None:
                    self.log.log(self.step, "valid", valid)
            if self.step == o.max_steps or (cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0):
                self.save()
        bar.close()
        export = self.export()
        self.log.close()
        return TrainResult(self.step, self.last_checkpoint, export, losses)

    @property
    def export_dir(self) -> Path | None:
        """Where the Hugging Face export goes (None: no export); checked before training, so that a folder this
        run did not write is refused before any work."""
        target = self.cfg.checkpoint.export_dir
        if target == "none":
            return None
        return Path(target) if target else Path(self.cfg.checkpoint.dir).parent / "hf"

    def export(self) -> Path | None:
        """Hugging Face export of the last checkpoint, written by rank 0 while the others wait."""
        out = self.export_dir
        if out is None or self.last_checkpoint is None:
            return None
        ds.barrier()
        if self.runtime.is_main:
            from recbase.train.export import export_hf

            export_hf(self.last_checkpoint, out, overwrite=True)   # its folder was checked when training started
            tqdm.write(f"exported Hugging Face model to {out}")
        ds.barrier()
        return out if self.runtime.is_main else None


def pretrain(cfg: TrainConfig) -> TrainResult:
    """Train (or fine-tune, with ``checkpoint.init_from``) as configured; resumes from ``checkpoint.dir``."""
    try:
        return Trainer(cfg).run()
    finally:
        ds.shutdown()
