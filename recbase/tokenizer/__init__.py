"""The item tokenizer: item-text embeddings → per-domain normalisation → L levels of K concept codes.

Three quantiser kinds share one artifact format (:mod:`recbase.tokenizer.artifact`): the curriculum-trained
residual VAE of the RecBase paper (``clvae``), residual k-means (``rqkmeans``) and finite scalar quantisation
(``fsq``). Encoding needs only the artifact; training lives in the per-kind modules.
"""
