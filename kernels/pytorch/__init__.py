"""Plain PyTorch references: the specification every Triton kernel is tested against."""
