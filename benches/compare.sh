#!/usr/bin/env bash
# Peer comparison for eia: runs eia's workloads and the same workloads on
# onnxruntime (CPU) and numpy (gemm, fp32) in one go, and prints a table of
# GFLOPS (gemm, conv) or GB/s (batchnorm, softmax, pool) with the ratio eia/peer
# (>1: eia faster). The peers live in benches/peers.py; their Python packages
# go into a git-ignored venv at .venv in the repo root.
#
# Usage: bash benches/compare.sh [--filter TEXT] [--dtype fp32|fp16]... [--seconds S]
set -euo pipefail

cd "$(dirname "$0")/.."

args=()
while (($#)); do
    case "$1" in
        --filter|--dtype|--seconds)
            (($# >= 2)) || { echo "compare.sh: $1 needs a value" >&2; exit 2; }
            args+=("$1" "$2"); shift 2 ;;
        -h|--help)
            sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *)
            echo "compare.sh: unknown argument '$1' (expected --filter, --dtype, --seconds)" >&2; exit 2 ;;
    esac
done

# Python peers: numpy, onnx, onnxruntime in .venv, installed only when missing.
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import numpy, onnx, onnxruntime' 2>/dev/null; then
    .venv/bin/pip install -q numpy onnx onnxruntime
fi
py=.venv/bin/python

cargo build --release --bin eia --quiet
eia=./target/release/eia

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# command: bash benches/compare.sh ${args[*]:-}"
echo "# date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the cores skews every number)"
echo "# nproc:   $(nproc)  ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
echo "# eia:     $($eia --version)  (git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ', dirty'))"
echo "# peers:   $($py -c 'import sys, numpy, onnx, onnxruntime as o; print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, onnx {onnx.__version__}, onnxruntime {o.__version__}")')"
echo

# eia first, then the peers (never both at once: they would share the cores).
$eia run --json "${args[@]}" > "$tmp/eia.jsonl"
$eia workloads --json | $py benches/peers.py "${args[@]}" > "$tmp/peers.jsonl"

$py benches/peers.py --join "$tmp/eia.jsonl" "$tmp/peers.jsonl"
