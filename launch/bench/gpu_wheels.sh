#!/usr/bin/env bash
# Wheels for a bare GPU machine (PyTorch, Triton and transformers installed; no internet), and their install.
#
#   bash launch/bench/gpu_wheels.sh build     # here, with PyPI reachable: fills gpu_wheels/ (ignored by git)
#   bash launch/bench/gpu_wheels.sh install   # there, offline: installs what gpu_suite.py needs from gpu_wheels/
#
# build: recbase itself, the pure-Python packages the suite needs beyond the machine's stack (deepspeed,
# webdataset, pytest, hypothesis and their dependencies) at the versions of the environment running this script,
# and the compiled ones (msgpack, pydantic-core, pyyaml, psutil, ninja, hypothesis, tomli) for every CPython in PYTHON_VERSIONS,
# since the GPU machine's Python is not known in advance. Nothing Parquet-related travels: the suite writes its
# shards without pyarrow. Everything stays far below the 64 MiB a working tree may carry (the script prints the size).
# install: `pip install --no-index`, so nothing is fetched; packages the machine already has are kept.
set -euo pipefail

DIR=${GPU_WHEELS:-gpu_wheels}
PY=${PYTHON:-python}
PYTHON_VERSIONS=${PYTHON_VERSIONS:-"3.10 3.11 3.12 3.13"}
PURE="deepspeed webdataset braceexpand hjson py-cpuinfo einops pydantic annotated-types typing-inspection
      typing-extensions pytest pluggy iniconfig pygments packaging sortedcontainers exceptiongroup"
COMPILED="msgpack pydantic-core pyyaml psutil ninja hypothesis tomli"   # hypothesis and tomli: mypyc builds

pinned() {  # "name==version" as installed here, or the bare name when it is not installed
    for name in "$@"; do
        "$PY" - "$name" <<'EOF'
import importlib.metadata as m, sys
try:
    print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")
except m.PackageNotFoundError:
    print(sys.argv[1])
EOF
    done
}

case "${1:-}" in
build)
    rm -rf "$DIR"
    mkdir -p "$DIR"
    # --no-build-isolation: deepspeed ships as an sdist whose setup.py imports torch; build it against the
    # installed torch instead of downloading one (DS_BUILD_OPS=0: no compiled ops, they are built on first use)
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIR" . $(pinned $PURE)
    for v in $PYTHON_VERSIONS; do
        for req in $(pinned $COMPILED); do
            "$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "$v" \
                --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
                -d "$DIR" "$req" 2>/dev/null || echo "note: no wheel of $req for Python $v (that Python cannot install it)"
        done
    done
    ls "$DIR"
    du -sh "$DIR"
    ;;
install)
    [ -d "$DIR" ] || { echo "$DIR: no wheel folder (run 'bash launch/bench/gpu_wheels.sh build' first)" >&2; exit 2; }
    PIP="${PY} -m pip install --quiet --no-index --find-links $DIR"
    $PIP --no-deps "$DIR"/recbase-*.whl   # the library alone: its other requirements are for the full pipeline
    $PIP deepspeed webdataset pytest hypothesis
    "$PY" -c "import deepspeed, webdataset, pytest, hypothesis, recbase; print('gpu wheels installed')"
    ;;
*)
    echo "usage: bash launch/bench/gpu_wheels.sh build|install   (GPU_WHEELS=folder, PYTHON=interpreter)" >&2
    exit 2
    ;;
esac
