#!/usr/bin/env bash
# The prepared device check: one GPU, at most --budget-s seconds (default 480 = 8 minutes).
#
#   bash scripts/gpu_check.sh --data-bin DIR [--out DIR] [--budget-s 480] [--peak-tflops T] [--dry-run]
#
# 1. installs what is missing (scripts/setup.sh keeps an installed CUDA torch; without internet,
#    run it with WHEELHOUSE=DIR, a wheelhouse from scripts/wheelhouse.sh) and records the machine;
# 2. runs the distributed check that fits one GPU with NCCL (world size 1): the sharded reconciliation
#    inside the trainer, and so the ZeRO adapter, against the unsharded single-process reference
#    (tests/dist/reconcile_equivalence.py: plain, sum, gradvac:all_layer), with activation
#    checkpointing and with the overlapped, bucketed bf16 GPU ds_configs (tests/dist/adapter_check.py
#    runs on gloo with CPU tensors, and the harness's CATS agreement check gathers CPU tensors,
#    which NCCL cannot: both stay CPU-only);
# 3. benchmarks `base` and `big` in bf16 (ds_configs/zero2_bf16_gpu.json, zero3_bf16_gpu.json) for
#    K = 2, 4, 8 with plain, bare, gradvac:all_layer, cats and naive (`massive-mt bench`), in the
#    order base/ZeRO-2, big/ZeRO-2, big/ZeRO-3, base/ZeRO-3, each run stopped at the budget;
# 4. renders `massive-mt bench-report` (step-time ratios, tokens/s and MFU per GPU, peak memory,
#    snapshot bytes, figures) and summary.md into --out.
#
# The data-bin is built beforehand where there is internet (the device machine has none), e.g.
#   massive-mt build-corpus --out gpu-corpus --wheels django-allauth==65.21.1 --min-pairs 100
#   massive-mt prepare --corpus gpu-corpus --out gpu-data-bin --vocab-size 8000
# and shipped with the repository (K = 8 needs at least 8 languages in it).
#
# --dry-run: the same steps on CPU (DS_ACCELERATOR=cpu, gloo) with the `test` preset, K = 2, one
# timed step and a smaller test set: checks the script end to end in about two minutes.
# Exit status: 0 when every check passed and the report was written, 1 otherwise, 2 on bad usage.
set -uo pipefail
usage() { echo "usage: $0 --data-bin DIR [--out DIR] [--budget-s SECONDS] [--peak-tflops T] [--dry-run]" >&2; exit 2; }
DATA_BIN="" OUT="gpu_check_out" BUDGET=480 DRY=0 PEAK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-bin) DATA_BIN=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --budget-s) BUDGET=${2:?}; shift 2 ;;
    --peak-tflops) PEAK=(--peak-tflops "${2:?}"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) usage ;;
  esac
done
[ -n "$DATA_BIN" ] || usage
[ -f "$DATA_BIN/manifest.json" ] || { echo "gpu_check: --data-bin $DATA_BIN: no manifest.json (build it with massive-mt prepare)" >&2; exit 2; }
DATA_BIN=$(cd "$DATA_BIN" && pwd)
cd "$(dirname "$0")/.."
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/check.log" >&2; }
rm -f "$OUT/bench.jsonl" "$OUT/checks.jsonl"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 1 ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
  PRESETS=(test) KS=(2) STEPS=1 WARMUP=0 MAX_TOKENS=256 MAX_LEN=48 EQ_STEPS=2
  BENCH=("test zero2_bf16_gpu.json" "test zero3_bf16_gpu.json")
else
  export DS_ACCELERATOR=cuda
  PRESETS=(base big) KS=(2 4 8) STEPS=5 WARMUP=2 MAX_TOKENS=4096 MAX_LEN=128 EQ_STEPS=3
  BENCH=("base zero2_bf16_gpu.json" "big zero2_bf16_gpu.json" "big zero3_bf16_gpu.json" "base zero3_bf16_gpu.json")
fi

# ---- 1. install what is missing, record the machine
environment() {
  "$PYTHON" - "$DRY" >"$OUT/environment.json" <<'EOF'
import json, platform, subprocess, sys
try:
    import deepspeed, massive_mt, sentencepiece, torch, transformers
except ImportError as e:
    print(json.dumps({"missing": str(e)}))
    sys.exit(3)
info = {"dry_run": sys.argv[1] == "1", "node": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__, "accelerator": deepspeed.get_accelerator().device_name()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
print(json.dumps(info, indent=1))
sys.exit(0 if info["dry_run"] or (info["accelerator"] == "cuda" and torch.cuda.is_available()) else 1)
EOF
}
environment; rc=$?
if [ "$rc" = 3 ]; then
  say "installing what is missing ($(tr -d '\n' <"$OUT/environment.json")): scripts/setup.sh"
  bash scripts/setup.sh >"$OUT/logs/setup.log" 2>&1 || { say "setup failed: see $OUT/logs/setup.log"; exit 1; }
  environment; rc=$?
fi
[ "$rc" = 0 ] || { say "no usable CUDA accelerator: $(tr -d '\n' <"$OUT/environment.json")"; exit 1; }
say "environment: $(tr -d '\n' <"$OUT/environment.json")"

# ---- 2. checks on one rank (NCCL on the GPU, gloo in the dry run)
torchrun_1() { timeout -k 10 "$1" "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port "$(( 29500 + RANDOM % 2000 ))" "${@:2}"; }
equivalence() {   # equivalence NAME DS_CONFIG TOLERANCE OVERRIDES...: one line of checks.jsonl
  local name=$1 ds=$2 tol=$3 log="$OUT/logs/$1.log"; shift 3
  if [ "$(left)" -lt $(( BUDGET / 2 )) ]; then     # half of the budget is kept for the benchmarks
    echo "{\"check\": \"$name (skipped: budget)\", \"ok\": false, \"tolerance\": $tol, \"result\": null}" >>"$OUT/checks.jsonl"
    say "$name skipped: half of the budget spent"; return
  fi
  torchrun_1 180 tests/dist/reconcile_equivalence.py "ds_configs/$ds" "$EQ_STEPS" plain sum gradvac:all_layer \
    -- "data.data_bin=$DATA_BIN" "data.max_len=48" "model.preset=test" "model.dropout=0.0" \
    "sampling.tasks_per_step=2" "sampling.max_tokens=256" "optim.lr=1e-2" "optim.warmup_steps=1" "optim.eps=1e-3" \
    "reconcile.ema_rate=1.0" "train.tensorboard=false" "train.output_dir=$OUT/logs/equivalence-run" "$@" >"$log" 2>&1
  "$PYTHON" - "$name" "$tol" "$log" "$?" >>"$OUT/checks.jsonl" <<'EOF'
import json, sys
name, tol, log, rc = sys.argv[1:5]
lines = [l for l in open(log, errors="replace") if l.startswith("RESULT ")]
r = json.loads(lines[-1][7:]) if lines else None
ok = r is not None and r["world_size"] == 1 and rc == "0" and \
    all(m["rel_diff"] <= float(tol) and m["moved"] > 0 for m in r["methods"].values())
print(json.dumps({"check": name, "ok": ok, "exit_status": int(rc), "tolerance": float(tol), "result": r}))
EOF
  say "$name: $(tail -n1 "$OUT/checks.jsonl" | grep -o '"ok": [a-z]*')"
}
equivalence equivalence-zero2-fp32-checkpointing zero2.json 1e-6 model.activation_checkpointing=true
if [ "$DRY" = 0 ]; then
  equivalence equivalence-zero3-fp32-checkpointing zero3.json 1e-6 model.activation_checkpointing=true
  equivalence equivalence-zero1-bf16-gpu-config zero1_bf16_gpu.json 2e-2
  equivalence equivalence-zero2-bf16-gpu-config zero2_bf16_gpu.json 2e-2
  equivalence equivalence-zero3-bf16-gpu-config zero3_bf16_gpu.json 2e-2
fi

# ---- 3. benchmarks, stopped at the budget (records are appended as each configuration ends)
RESERVE=45      # seconds kept for the report
for b in "${BENCH[@]}"; do
  set -- $b
  t=$(( $(left) - RESERVE ))
  if [ "$t" -lt 30 ]; then say "budget spent: skipping bench $1 $2"; echo "$1 $2" >>"$OUT/skipped.txt"; continue; fi
  say "bench $1 $2 (up to ${t}s)"
  torchrun_1 "$t" -m massive_mt.experiments.bench --data-bin "$DATA_BIN" --ds-config "ds_configs/$2" --preset "$1" \
    --tasks-per-step "${KS[@]}" --methods plain bare gradvac:all_layer cats naive --max-tokens "$MAX_TOKENS" \
    --steps "$STEPS" --warmup "$WARMUP" --out "$OUT/bench.jsonl" "${PEAK[@]}" "data.max_len=$MAX_LEN" \
    >"$OUT/logs/bench-$1-${2%.json}.log" 2>&1 || say "bench $1 $2 stopped (exit $?): see logs/bench-$1-${2%.json}.log"
done

# ---- 4. report and summary
status=0
if [ -s "$OUT/bench.jsonl" ]; then
  "$PYTHON" -m massive_mt.cli bench-report "$OUT/bench.jsonl" --out "$OUT" >"$OUT/logs/report.log" 2>&1 || status=1
else
  say "no benchmark record"; status=1
fi
"$PYTHON" - "$OUT" "$DRY" "${PRESETS[*]}" "${KS[*]}" <<'EOF' || status=1
import json, sys
from pathlib import Path
out, dry, presets, ks = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3].split(), [int(k) for k in sys.argv[4].split()]
checks = [json.loads(l) for l in (out / "checks.jsonl").read_text().splitlines()]
bench = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines()] if (out / "bench.jsonl").exists() else []
env = json.loads((out / "environment.json").read_text())
lines = ["# Device check" + (" (dry run on CPU)" if dry else ""), "",
         f"Machine: {env.get('gpu', env['accelerator'])}, torch {env['torch']} (CUDA {env['cuda']}), "
         f"deepspeed {env['deepspeed']}, transformers {env['transformers']}", "", "## Checks (world size 1)", "",
         "| check | passed | tolerance | worst rel. diff |", "|---|---|---:|---:|"]
for c in checks:
    r = c["result"] or {}
    worst = max((m["rel_diff"] for m in r.get("methods", {}).values()), default=None)
    lines.append(f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['tolerance']:g} | "
                 f"{'' if worst is None else f'{worst:.2e}'} |")
done = {(r["preset"], r["zero_stage"], r["K"], r["method"]) for r in bench}
want = [(p, z, k, m) for p in presets for z in (2, 3) for k in ks
        for m in ("plain", "bare", "gradvac:all_layer", "cats", "naive")]
missing = [w for w in want if w not in done]
lines += ["", "## Benchmarks", "", f"{len(done)} of {len(want)} configurations measured; report: report.md",
          *([f"- not measured (budget spent or the run failed, see logs/): {', '.join(f'{p}/ZeRO-{z}/K={k}/{m}' for p, z, k, m in missing)}"]
            if missing else [])]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if checks and all(c["ok"] for c in checks) and not missing else 1)
EOF
say "done in $(( $(date +%s) - START ))s: $OUT/summary.md, $OUT/report.md (exit $status)"
exit $status
