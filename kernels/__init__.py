"""Fused kernels for recbase, each a small family: a PyTorch reference (``kernels/pytorch/pt_<op>.py``, the
specification), a Triton kernel (``kernels/triton/triton_<op>.py``) and a dispatcher (``kernels/<op>.py``) that
runs the Triton kernel on CUDA tensors and the reference elsewhere.

Ops: ``kernels.rq_search.rq_search`` (greedy residual-quantisation code search) and
``kernels.fused_linear_ce.fused_linear_cross_entropy`` (LM-head projection + cross-entropy without the full
logits matrix).
"""
