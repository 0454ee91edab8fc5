"""recbase: pretraining stack for generative recommendation foundation models.

The pipeline (one sub-package per stage): ``recbase.data`` (ingest, demo world, shards, loader) →
``recbase.tokenizer`` (embeddings, CL-VAE / RQ-Kmeans / FSQ) → ``recbase.train`` (DeepSpeed pretraining) →
``recbase.eval`` (zero-shot scoring, retrieval, reports).
"""

__version__ = "0.1.0"

from recbase import chatter as _chatter  # noqa: E402

_chatter.install()
