#!/usr/bin/env bash
# Peer comparison for eia: runs eia's workloads and the same workloads on
# onnxruntime (CPU) and numpy (gemm, fp32), and prints a table of GFLOPS (gemm,
# conv) or GB/s (batchnorm, softmax, pool, ...) with the ratio eia/peer (>1: eia
# faster). Each workload runs on eia and then on its peers back to back (the
# peers first every other round), so both see the machine in the same minute: on
# a shared host the speed drifts from one minute to the next. With --rounds R,
# every number is a median over R rounds and eia/peer the median of the
# per-round ratios. The peers live in benches/peers.py; their Python packages go
# into a git-ignored venv at .venv in the repo root.
#
# Usage: bash benches/compare.sh [--filter TEXT] [--dtype fp32|fp16]... [--seconds S] [--rounds R]
set -euo pipefail

cd "$(dirname "$0")/.."

args=() filter="" dtypes=() seconds=0.3 rounds=1
while (($#)); do
    case "$1" in
        --filter|--dtype|--seconds|--rounds)
            (($# >= 2)) || { echo "compare.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --filter) filter=$2 ;;
                --dtype) dtypes+=("$2") ;;
                --seconds) seconds=$2 ;;
                --rounds)
                    [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds needs a whole number ≥ 1, not '$2'" >&2; exit 2; }
                    rounds=$2 ;;
            esac
            args+=("$1" "$2"); shift 2 ;;
        -h|--help)
            sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *)
            echo "compare.sh: unknown argument '$1' (expected --filter, --dtype, --seconds, --rounds)" >&2; exit 2 ;;
    esac
done
((${#dtypes[@]})) || dtypes=(fp32 fp16)

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

# One workload and dtype at a time, on eia and then on its peers (never both at once: they
# would share the cores), the order reversed every other round.
$eia workloads --json > "$tmp/workloads.jsonl"
workloads=()
while IFS= read -r line; do
    [[ $line =~ \"id\":\"([^\"]+)\" && ${BASH_REMATCH[1]} == *"$filter"* ]] && workloads+=("$line")
done < "$tmp/workloads.jsonl"
((${#workloads[@]})) || { echo "compare.sh: no workload id contains '$filter'" >&2; exit 2; }
: > "$tmp/eia.jsonl"
: > "$tmp/peers.jsonl"
on_eia() {  # workload id, dtype
    $eia run --json --filter "$1" --dtype "$2" --seconds "$seconds" > "$tmp/one.jsonl"
    grep -F "\"id\":\"$1\"," "$tmp/one.jsonl" >> "$tmp/eia.jsonl" ||
        { echo "compare.sh: eia run printed no result for $1 $2" >&2; exit 1; }
}
on_peers() {  # workload line, dtype
    printf '%s\n' "$1" | $py benches/peers.py --dtype "$2" --seconds "$seconds" >> "$tmp/peers.jsonl"
}
for ((r = 1; r <= rounds; r++)); do
    echo "# round $r of $rounds: ${#workloads[@]} workloads × ${#dtypes[@]} dtypes" >&2
    for line in "${workloads[@]}"; do
        [[ $line =~ \"id\":\"([^\"]+)\" ]]
        id=${BASH_REMATCH[1]}
        for dt in "${dtypes[@]}"; do
            if ((r % 2)); then
                on_eia "$id" "$dt"; on_peers "$line" "$dt"
            else
                on_peers "$line" "$dt"; on_eia "$id" "$dt"
            fi
        done
    done
done

$py benches/peers.py --join "$tmp/eia.jsonl" "$tmp/peers.jsonl"
