"""Pretraining and fine-tuning of the Qwen2 decoder on packed concept-ID sequences.

Read in this order: :mod:`config` (every option), :mod:`model` (the single-device model, attention masks and the
token loss), :mod:`engine` (everything DeepSpeed: ZeRO config, engine, saving and restoring its state), :mod:`checkpoint`
(checkpoint folders: publication, manifest, resolution, weights-only loading, consolidation), :mod:`loop` (the
training loop), :mod:`export` (Hugging Face export and :func:`export.load_model`), :mod:`estimates` (parameters,
FLOPs, memory, MFU).
"""
