"""The training config: one JSON file (``launch/configs/*.json``) read into these dataclasses.

Unknown keys are an error (:func:`recbase.config.load_config`); ``key=value`` overrides use dotted names, e.g.
``optim.lr=1e-4 deepspeed.zero_stage=2``. Every field has a default and a one-line meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recbase.config import AT_LEAST_0, AT_LEAST_1, POSITIVE, ConfigError, Range, check_ranges, load_config
from recbase.presets import preset_dir

CONFIG_DIR = preset_dir()   # kept under this name for the callers that import it


@dataclass
class ModelConfig:
    hidden_size: int = 128                   # width of the residual stream
    intermediate_size: int = 352             # width of the SwiGLU MLP
    num_layers: int = 2                      # decoder layers
    num_heads: int = 4                       # query heads
    num_kv_heads: int | None = None          # key/value heads (grouped-query attention); None = num_heads
    max_position_embeddings: int = 4096      # longest sequence RoPE is set up for
    rope_theta: float = 10000.0              # RoPE base
    rms_norm_eps: float = 1e-6               # RMSNorm epsilon
    tie_word_embeddings: bool = True         # share the input embedding and the output projection
    init_std: float = 0.02                   # std of the normal init of every weight matrix
    dropout: float = 0.0                     # in training, dropout on the attention weights, the token embeddings
                                             # and each residual branch's output (0 = none)
    vocab_size: int | None = None            # None = Vocab.model_vocab_size of the shard manifest
    attention: str = "auto"                  # auto | sdpa | eager | flex_attention | flash_attention_2 (auto: FA2 on
                                             # CUDA if importable, else flex_attention on CUDA, sdpa on CPU)
    attention_pattern: str = "causal"        # causal | hybrid (RecGPT: bidirectional inside an item, causal across)
    activation_checkpointing: bool = False   # recompute each layer in backward to save activation memory
    fused_linear_ce: bool = False            # kernels.fused_linear_ce instead of materialising the logits
    code_init: str = ""                      # tokenizer artifact: concept-token embeddings start near its codewords
    embedding_head: str = ""                 # tokenizer artifact: also predict the next item's centred text embedding
                                             # (its reconstruction by this tokenizer); "" = no head
    embedding_head_kind: str = "attention"   # attention (re-weights the history's items) | features (attention that
                                             # also weighs each item's similarity to the latest and to the mean, and
                                             # its position) | linear (mean + a correction)
    embedding_loss: str = "cosine"           # the head's loss: cosine (1 - cos) | contrastive (same-user negatives)
    embedding_weight: float = 1.0            # weight of the head's loss per predicted item beside the token loss
    embedding_lr_scale: float = 3.0          # the head's learning rate as a multiple of optim.lr
    embedding_head_recency: str = ""         # recbase head-recency file: the attention head's recency biases start
                                             # there and stay fixed (fitted listwise on real embeddings); "" = learned
    embedding_temperature: float = 0.1       # softmax temperature of the contrastive loss
    text_inputs: str = ""                    # tokenizer artifact: add each item's text vector (its reconstruction by
                                             # this tokenizer, projected) at the item's last token; "" = codes only


@dataclass
class DataConfig:
    shards: str = "shards/demo"              # folder with *.tar shards and manifest.json
    train_split: str = "train"               # split name of the training shards in the manifest
    valid_split: str = "valid"               # split name of the held-out shards ("" = no validation)
    seq_len: int = 512                       # tokens per packed row
    packed: bool = True                      # pack many users per row (False: one user per row, padded)
    num_workers: int = 0                     # loader worker processes per rank
    tokenizer_hash: str | None = None        # expected tokenizer hash; None = accept the manifest's (and record it)


@dataclass
class OptimConfig:
    lr: float = 3e-4                         # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1                # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100                  # linear warm-up steps
    max_steps: int = 1000                    # optimizer steps in total
    weight_decay: float = 0.1                # decoupled weight decay (not on norms, biases, embeddings)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0                   # global grad-norm clip (0 = off)
    global_batch_tokens: int = 65536         # tokens per optimizer step over all ranks (padding included)
    micro_batch_size: int = 8                # rows per forward on one rank


@dataclass
class PrecisionConfig:
    dtype: str = "auto"                      # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32


@dataclass
class CheckpointConfig:
    dir: str = "runs/recbase/checkpoints"    # DeepSpeed checkpoint folders global_step<N>/ go here
    every_steps: int = 500                   # save every N optimizer steps (and at the end; 0 = only at the end)
    resume: str = "auto"                     # auto (latest in dir, if any) | none | path of a checkpoint folder
    init_from: str = ""                      # fine-tuning: start from these weights (HF export or checkpoint folder)
    export_dir: str = ""                     # Hugging Face export at the end ("" = <dir>/../hf, "none" = skip)


@dataclass
class LoggingConfig:
    dir: str = "runs/recbase/logs"           # metrics.jsonl and TensorBoard events
    every_steps: int = 10                    # log every N optimizer steps
    valid_every_steps: int = 200             # validation loss every N steps (0 = only at the end)
    valid_batches: int = 16                  # micro-batches per rank for one validation pass
    tensorboard: bool = True                 # also write TensorBoard events
    progress: bool = True                    # tqdm progress bar on rank 0
    peak_tflops: float | None = None         # device peak for MFU; None = look the device up (n/a on CPU)


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 3                      # ZeRO stage 0, 1, 2 or 3
    reduce_bucket_size: int | None = None    # None = hidden_size**2
    prefetch_bucket_size: int | None = None  # ZeRO-3 parameter prefetch; None = 0.9 * hidden_size**2
    param_persistence_threshold: int | None = None  # ZeRO-3: params smaller than this stay whole; None = 10 * hidden
    overlap_comm: bool | None = None         # None = on with CUDA, off on CPU
    offload_optimizer: bool = False          # keep optimizer states in CPU memory (ZeRO-Offload)
    optimizer: str = "auto"                  # auto (FusedAdam on CUDA, torch AdamW on CPU) | torch | fused
    tensor_parallel: int = 1                 # AutoTP degree (not with ZeRO-3)
    sequence_parallel: int = 1               # Ulysses degree; only 1 for now (see docs/scaling.md)
    comm_backend: str = "auto"               # auto (nccl on CUDA, gloo on CPU) | nccl | gloo


RANGES = {
    "seed": AT_LEAST_0, "model.hidden_size": AT_LEAST_1, "model.intermediate_size": AT_LEAST_1,
    "model.num_layers": AT_LEAST_1, "model.num_heads": AT_LEAST_1, "model.num_kv_heads": AT_LEAST_1,
    "model.max_position_embeddings": Range(2), "model.rope_theta": POSITIVE, "model.rms_norm_eps": POSITIVE,
    "model.init_std": POSITIVE, "model.dropout": Range(0, 1, hi_open=True),
    "model.embedding_weight": AT_LEAST_0, "model.embedding_lr_scale": POSITIVE,
    "model.embedding_temperature": POSITIVE, "model.vocab_size": AT_LEAST_1, "data.seq_len": Range(2),
    "data.num_workers": AT_LEAST_0, "optim.lr": POSITIVE, "optim.min_lr_ratio": Range(0, 1),
    "optim.warmup_steps": AT_LEAST_0, "optim.max_steps": AT_LEAST_1, "optim.weight_decay": AT_LEAST_0,
    "optim.beta1": Range(0, 1, hi_open=True), "optim.beta2": Range(0, 1, hi_open=True), "optim.eps": POSITIVE,
    "optim.grad_clip": AT_LEAST_0, "optim.global_batch_tokens": AT_LEAST_1, "optim.micro_batch_size": AT_LEAST_1,
    "checkpoint.every_steps": AT_LEAST_0, "logging.every_steps": AT_LEAST_1, "logging.valid_every_steps": AT_LEAST_0,
    "logging.valid_batches": AT_LEAST_0, "deepspeed.tensor_parallel": AT_LEAST_1,
    "deepspeed.reduce_bucket_size": AT_LEAST_1, "deepspeed.prefetch_bucket_size": AT_LEAST_1,
    "deepspeed.param_persistence_threshold": AT_LEAST_0,
}


@dataclass
class TrainConfig:
    run_name: str = "recbase"                # shown in logs
    seed: int = 0                            # model init, data order
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)

    def validate(self) -> "TrainConfig":
        """Reject combinations that cannot run, naming the keys."""
        m, d, ds = self.model, self.data, self.deepspeed
        check_ranges(self, RANGES)
        if m.attention not in ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2"):
            raise ConfigError(f"model.attention: {m.attention!r} is not auto | sdpa | eager | flex_attention | "
                              "flash_attention_2")
        if m.attention_pattern not in ("causal", "hybrid"):
            raise ConfigError(f"model.attention_pattern: {m.attention_pattern!r} is not causal | hybrid")
        from recbase.train.embedding_head import KINDS as HEAD_KINDS   # torch only when a config is checked
        if m.embedding_head_kind not in HEAD_KINDS:
            raise ConfigError(f"model.embedding_head_kind: {m.embedding_head_kind!r} is not {' | '.join(HEAD_KINDS)}")
        if m.embedding_head_recency and (not m.embedding_head or m.embedding_head_kind == "linear"):
            raise ConfigError("model.embedding_head_recency sets the attention head's recency biases: it needs "
                              "model.embedding_head and model.embedding_head_kind attention or features")
        if m.embedding_loss not in ("cosine", "contrastive"):
            raise ConfigError(f"model.embedding_loss: {m.embedding_loss!r} is not cosine | contrastive")
        if m.hidden_size % m.num_heads:
            raise ConfigError(f"model.hidden_size {m.hidden_size} is not a multiple of model.num_heads {m.num_heads}")
        if m.num_heads % (m.num_kv_heads or m.num_heads):
            raise ConfigError(f"model.num_heads {m.num_heads} is not a multiple of model.num_kv_heads")
        if ds.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage: {ds.zero_stage} is not 0, 1, 2 or 3")
        if ds.tensor_parallel > 1 and ds.zero_stage == 3:
            raise ConfigError("deepspeed.tensor_parallel > 1 (AutoTP) does not combine with deepspeed.zero_stage=3")
        if ds.sequence_parallel != 1:
            raise ConfigError("deepspeed.sequence_parallel > 1: Ulysses is not wired in (DeepSpeed's Ulysses "
                              "attention drops the packed-users mask; see docs/scaling.md)")
        if ds.optimizer not in ("auto", "torch", "fused"):
            raise ConfigError(f"deepspeed.optimizer: {ds.optimizer!r} is not auto | torch | fused")
        if self.precision.dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision.dtype: {self.precision.dtype!r} is not auto | bf16 | fp32")
        if d.seq_len > m.max_position_embeddings:
            raise ConfigError(f"data.seq_len {d.seq_len} exceeds model.max_position_embeddings "
                              f"{m.max_position_embeddings}: RoPE is not set up for positions that far")
        return self

    def check_seq_len(self, levels: int) -> None:
        """A row must hold ``bos`` and one whole item, or no item is ever predicted."""
        if self.data.seq_len < levels + 1:
            raise ConfigError(f"data.seq_len={self.data.seq_len} is shorter than one item: the shards' items are "
                              f"{levels} tokens, so data.seq_len must be >= {levels + 1} (bos + one item)")

    def gradient_accumulation_steps(self, dp_world: int) -> int:
        """Micro-batches per rank per optimizer step so that the step sees ``optim.global_batch_tokens`` tokens."""
        per_micro = self.optim.micro_batch_size * self.data.seq_len * dp_world
        gas, rest = divmod(self.optim.global_batch_tokens, per_micro)
        if rest or gas < 1:
            raise ConfigError(
                f"optim.global_batch_tokens={self.optim.global_batch_tokens} is not a positive multiple of "
                f"micro_batch_size * seq_len * data-parallel ranks = {self.optim.micro_batch_size} * "
                f"{self.data.seq_len} * {dp_world} = {per_micro}")
        return gas


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training config; a bare name such as ``1.5b.json`` is also looked up in ``launch/configs/``."""
    return load_config(TrainConfig, path, overrides, search_dirs=[CONFIG_DIR]).validate()


def load_finetune_config(path: str | Path | None, init: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A fine-tuning config: data and optimisation from ``path``, the architecture from the weights in ``init``
    (an HF export or a checkpoint folder), which the run starts from."""
    import json

    from recbase.train.export import load_meta

    model = load_meta(init)["train_config"]["model"]
    inherited = [f"model.{k}={json.dumps(v)}" for k, v in model.items()]
    return load_train_config(path, [*inherited, *(overrides or []), f"checkpoint.init_from={init}"])
