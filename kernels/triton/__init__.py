"""Triton kernels. Import these modules lazily: ``TRITON_INTERPRET`` is read when a kernel is decorated."""
