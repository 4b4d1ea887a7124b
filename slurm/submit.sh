# Sourced by a template run as a script instead of through sbatch:
#
#   GPUS_PER_NODE=8 bash slurm/train_multi_node_srun.sbatch data.data_bin=/data/data-bin
#
# submits the template with the GPUs, tasks and cores that GPUS_PER_NODE asks for, then exits.
#   GPUS_PER_NODE  GPUs per node, and ranks per node in the job; 0: a CPU job, the #SBATCH lines as they are
#   CPUS_PER_GPU   cores per GPU (default 8)
# $1 is how the template starts its ranks: `per-gpu` (one Slurm task per GPU: srun, deepspeed
# --launcher slurm, the bench array) or `launcher` (one task starts the node's ranks itself);
# the rest is the template and its arguments. Options the template's #SBATCH lines set are
# overridden (sbatch's command line wins); SBATCH_ARGS adds more, e.g. "--nodes=4 --time=4:00:00".
mode=$1
shift
GPUS_PER_NODE=${GPUS_PER_NODE:-0}
CPUS_PER_GPU=${CPUS_PER_GPU:-8}
request=()
if [ "$GPUS_PER_NODE" -gt 0 ]; then
  case "$mode" in
    per-gpu)  request=(--gpus-per-node="$GPUS_PER_NODE" --ntasks-per-node="$GPUS_PER_NODE"
                       --cpus-per-task="$CPUS_PER_GPU") ;;
    launcher) request=(--gpus-per-node="$GPUS_PER_NODE" --ntasks-per-node=1
                       --cpus-per-task=$(( GPUS_PER_NODE * CPUS_PER_GPU ))) ;;
    *)        echo "slurm/submit.sh: unknown mode '$mode'" >&2; exit 2 ;;
  esac
fi
if [ "$GPUS_PER_NODE" -gt 0 ]; then export GPUS_PER_NODE; else unset GPUS_PER_NODE; fi   # 0: the template's own default
# shellcheck disable=SC2086  # SBATCH_ARGS is a word list on purpose
exec sbatch ${request[@]+"${request[@]}"} ${SBATCH_ARGS:-} "$@"
