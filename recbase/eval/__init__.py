"""Zero-shot evaluation of a pretrained concept-ID model on held-out domains.

``metrics`` (AUC, GAUC, Recall/NDCG/MRR) ← ``scoring`` (log P(candidate | history), KV cache shared per user) and
``retrieval`` (beam search over a prefix trie of the catalog's code tuples, ``trie``) ← ``model_io`` (Hugging
Face export or DeepSpeed checkpoint, tokenizer-hash check) and ``inputs`` (eval sets, catalog, history items);
``baselines`` score the same pairs without a model; ``report`` writes metrics.json, report.md and charts;
``job`` ties them together for ``recbase evaluate``.
"""
