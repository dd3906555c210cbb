#!/usr/bin/env bash
# Every CUDA path of kdbench in one call (about 8 minutes on one H100), for a GPU lent for minutes.
#
#   benchmarks/gpu_acceptance.sh OUT [--cpu]
#
# Installs what the machine lacks, then runs benchmarks/gpu_acceptance.py (its docstring lists
# the steps: doctor, the offline suite on CUDA, kdbench bench (a)-(d), torchrun with two
# processes on the one GPU), which writes OUT/summary.json and OUT/logs/. --cpu: the short
# CPU form the tests run.
#
# Installing: a GPU image with Python 3.12 and torch may lack kdbench's other dependencies
# and cannot reach PyPI. Every dependency of pyproject.toml that does not import is installed
# from a wheels folder ($KDBENCH_WHEELS, else wheels/ in the repository) when there is one,
# then kdbench itself (without dependencies, so the image's torch stays). Fill the folder on
# a machine that reaches PyPI (the torch-dependent ones without their dependencies, so that
# no torch wheel comes along):
#
#   pip download --python-version 3.12 --only-binary=:all: -d wheels \
#       setuptools pydantic PyWavelets optuna submitit scikit-learn scipy pyyaml tqdm \
#       scikit-posthocs lightning-utilities
#   pip download --python-version 3.12 --only-binary=:all: --no-deps -d wheels ptwt torchmetrics
#
# (about 60 MB; on an image that also lacks timm, pandas, matplotlib, seaborn or jinja2, add them
# to the first line, and timm to the second).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT [--cpu]" >&2
    exit 2
fi
out="$1"
shift
mkdir -p "$out/logs"
python="${PYTHON:-python3}"
wheels="${KDBENCH_WHEELS:-wheels}"

# Dependencies of pyproject.toml whose distribution is not installed, one per line.
missing() {
    "$python" - <<'EOF'
import importlib.metadata, re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        print(requirement)
EOF
}

mapfile -t absent < <(missing)
if [ ${#absent[@]} -gt 0 ]; then
    if [ -d "$wheels" ]; then
        echo "installing from $wheels: ${absent[*]}"
        "$python" -m pip install --quiet --no-index --find-links "$wheels" "${absent[@]}" 2>&1 | tee "$out/logs/install.log"
    else
        echo "missing, and no wheels folder ($wheels) to install them from: ${absent[*]}" | tee "$out/logs/install.log"
    fi
fi
if ! "$python" -c "import kdbench.methods" 2>/dev/null; then
    # its build needs setuptools>=77: from the wheels folder where there is one (no index: none in reach)
    offline=()
    [ -d "$wheels" ] && offline=(--no-index --find-links "$wheels")
    "$python" -m pip install --quiet --no-deps "${offline[@]}" . 2>&1 | tee -a "$out/logs/install.log"
fi
exec "$python" benchmarks/gpu_acceptance.py "$out" "$@"
