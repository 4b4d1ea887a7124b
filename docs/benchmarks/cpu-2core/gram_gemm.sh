#!/bin/bash
# Step time of gradvac:all_layer and cats against plain at K = 8, N = 1 and 2 (tiny, ZeRO-2, fp32,
# gloo, one thread per rank) with the Grams as fp32 block GEMMs summed in fp64; the three methods
# interleaved over --repeats rounds; then the micro-benchmark of local_grams against the fp64 Gram.
#
#   bash docs/benchmarks/cpu-2core/gram_gemm.sh DATA_BIN [REPEATS] [OUT_DIR]
#
# DATA_BIN: the demo's data-bin (`massive-mt demo`, 8 k vocabulary), as for run.sh.
set -euo pipefail
DB=${1:?usage: gram_gemm.sh DATA_BIN [REPEATS] [OUT_DIR]}
R=${2:-4}
OUT=${3:-docs/benchmarks/cpu-2core}
cd "$(dirname "$0")/../../.."
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
mkdir -p "$OUT"
rm -f "$OUT/gram_gemm.jsonl"
for n in 1 2; do
  echo "N=$n start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  torchrun --nproc_per_node "$n" -m massive_mt.experiments.bench --data-bin "$DB" data.max_len=64 \
    --ds-config ds_configs/zero2.json --max-tokens 512 --preset tiny --tasks-per-step 8 \
    --steps 5 --warmup 2 --repeats "$R" --methods plain gradvac:all_layer cats --out "$OUT/gram_gemm.jsonl"
  echo "N=$n end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
done
massive-mt bench-report "$OUT/gram_gemm.jsonl" --out "$OUT/gram_gemm"
python docs/benchmarks/cpu-2core/gram_bench.py --presets tiny small --world-sizes 1 2 --tasks 8 \
  --granularities all_layer whole_model --repeats 5 --out "$OUT/gram_bench.jsonl"
