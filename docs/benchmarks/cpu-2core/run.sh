#!/bin/bash
# The CPU benchmark of the README ("Benchmarks"): tiny and small presets, 1, 2 and 4 ranks,
# K = 2, 4, 8, ZeRO-2, fp32, gloo, one thread per rank; then plain against a bare DeepSpeed loop,
# repeated and interleaved. About 55 minutes on a 2-core machine.
#
#   bash docs/benchmarks/cpu-2core/run.sh DATA_BIN [OUT_DIR]
#
# DATA_BIN: a data-bin from `massive-mt prepare` (the README's numbers: the demo's,
# demo_run/data-bin). Nothing else may run on the machine meanwhile.
set -euo pipefail
DB=${1:?usage: run.sh DATA_BIN [OUT_DIR]}
OUT=${2:-docs/benchmarks/cpu-2core}
cd "$(dirname "$0")/../../.."
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
mkdir -p "$OUT"
bench() {   # bench NPROC FILE ARGS...
  local n=$1 file=$2; shift 2
  torchrun --nproc_per_node "$n" -m massive_mt.experiments.bench --data-bin "$DB" data.max_len=64 \
    --ds-config ds_configs/zero2.json --max-tokens 512 --out "$OUT/$file" "$@"
}
rm -f "$OUT/bench.jsonl" "$OUT/plain_vs_bare.jsonl"
TINY=(--preset tiny --steps 5 --warmup 2 --tasks-per-step 2 4 8)
SMALL=(--preset small --steps 4 --warmup 1 --tasks-per-step 2 4 8)
bench 2 bench.jsonl "${TINY[@]}" --methods plain bare sum pcgrad gradvac:whole_model gradvac:all_layer cats naive
bench 1 bench.jsonl "${TINY[@]}" --methods plain bare gradvac:all_layer cats
bench 4 bench.jsonl "${TINY[@]}" --methods plain gradvac:all_layer cats naive
bench 2 bench.jsonl "${SMALL[@]}" --methods plain bare gradvac:all_layer cats naive
bench 1 bench.jsonl "${SMALL[@]}" --methods plain gradvac:all_layer cats
bench 4 bench.jsonl "${SMALL[@]}" --methods plain gradvac:all_layer cats naive
bench 2 plain_vs_bare.jsonl --preset tiny --tasks-per-step 4 --steps 6 --warmup 2 --repeats 4 --methods plain bare
bench 2 plain_vs_bare.jsonl --preset small --tasks-per-step 4 --steps 4 --warmup 1 --repeats 3 --methods plain bare
massive-mt bench-report "$OUT/bench.jsonl" --out "$OUT"
massive-mt bench-report "$OUT/plain_vs_bare.jsonl" --out "$OUT/plain_vs_bare"
