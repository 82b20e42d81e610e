#!/usr/bin/env bash
# Submit a batch to SLURM: an array job (one task per chunk of experiments, at most THROTTLE at
# once), then a summary job with --dependency=afterany on the array: once every task has ended,
# failed or not, it merges the shard reports into batch_report.json and exits 1 if any failed.
#
#   jobs/submit.sh ROOT [CONFIG] [submit options] [sbatch options] [-- batch options]
#   jobs/submit.sh logs/ --config tips-plain --partition gpu --account lab --gres gpu:1 --time 2:00:00
#
# submit options:
#   --config NAME   preset (or the second argument)
#   --per-task K    experiments per array task (default 4)
#   --throttle M    array tasks running at once (default 8): the %M of --array=0-N%M
#   --gpu           the GPU variant of the array (index_array_gpu.sbatch: --gres=gpu:1, dask-cuda)
#   --sweep         chain dask_batch.sbatch instead of the summary: a Dask job over several nodes that
#                   retries what failed, then writes batch_report.json (its exit code: any failed)
#   --dry-run       check every header, print the plan and the sbatch commands, submit nothing
# sbatch options, as sbatch spells them (--opt VALUE or --opt=VALUE):
#   to both jobs:     -p/--partition -A/--account -q/--qos --reservation --mail-type --mail-user
#                     --exclude --nodelist -C/--constraint
#   to the array job: -t/--time --gres -G/--gpus --gpus-per-task --mem --mem-per-cpu -c/--cpus-per-task
#                     and --sbatch-NAME[=VALUE] for any other sbatch option (--sbatch-nice=10)
#   (with --sweep every one goes to both jobs)
# Everything after `--` goes to `rvc-index batch` (e.g. --out DIR --set k=v --only 'a*' --retries 1).
# RVC_INDEX_BIN: the rvc-index command (default: rvc-index on PATH); jobs inherit the environment.
set -euo pipefail

usage="usage: jobs/submit.sh ROOT [CONFIG] [--per-task K] [--throttle M] [--gpu] [--sweep] [--dry-run]
       [sbatch options: --partition P --account A --gres G --time T ...] [-- batch options]"
fail() { echo "jobs/submit.sh: $*" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${RVC_INDEX_BIN:-rvc-index}
command -v "$bin" >/dev/null 2>&1 || fail "'$bin' not found: set RVC_INDEX_BIN to the rvc-index command"
[[ $# -gt 0 && $1 != -* ]] || fail "$usage"
root=$(realpath -m "$1")
shift
config=()
if [[ $# -gt 0 && $1 != -* ]]; then config=(--config "$1"); shift; fi
per_task=4
throttle=8
dry_run=0
array_script=index_array.sbatch
sweep=0
both=()  # sbatch options for both jobs
array_only=()
batch=()

value() {  # value OPTION "$@": the value of --opt=VALUE or --opt VALUE
    local option=$1
    shift
    if [[ $1 == *=* ]]; then echo "${1#*=}"; return; fi
    [[ $# -ge 2 ]] || fail "$option needs a value"
    echo "$2"
}
while [[ $# -gt 0 ]]; do
    name=${1%%=*}
    case $name in
        --) shift; batch=("$@"); break ;;
        --config) config=(--config "$(value "$name" "$@")") ;;
        --per-task) per_task=$(value "$name" "$@") ;;
        --throttle) throttle=$(value "$name" "$@") ;;
        --gpu) array_script=index_array_gpu.sbatch ;;
        --sweep) sweep=1 ;;
        --dry-run) dry_run=1 ;;
        -p|--partition|-A|--account|-q|--qos|--reservation|--mail-type|--mail-user|--exclude|-x|--nodelist|-w|\
        -C|--constraint)
            v=$(value "$name" "$@"); both+=("$name=$v") ;;
        -t|--time|--gres|-G|--gpus|--gpus-per-task|--gpus-per-node|--mem|--mem-per-cpu|--mem-per-gpu|\
        -c|--cpus-per-task|--cpus-per-gpu|--nodes|-N|--ntasks-per-node)
            v=$(value "$name" "$@"); array_only+=("$name=$v") ;;
        --sbatch-*)
            option=--${name#--sbatch-}
            if [[ $1 == *=* ]]; then array_only+=("$option=${1#*=}"); else array_only+=("$option"); fi ;;
        *) fail "unknown option $1 (batch options go after --; other sbatch options as --sbatch-NAME=VALUE)
$usage" ;;
    esac
    # one word (a flag, --opt=VALUE) or two (--opt VALUE)
    if [[ $name != "$1" || $name == --gpu || $name == --sweep || $name == --dry-run || $name == --sbatch-* ]]; then
        shift
    else
        shift 2
    fi
done
[[ $per_task =~ ^[1-9][0-9]*$ ]] || fail "--per-task $per_task: expected a number >= 1"
[[ $throttle =~ ^[1-9][0-9]*$ ]] || fail "--throttle $throttle: expected a number >= 1"
# short options in --opt=VALUE form are not sbatch's: spell them out
normalise() { sed -e 's/^-p=/--partition=/;s/^-A=/--account=/;s/^-q=/--qos=/;s/^-x=/--exclude=/' \
    -e 's/^-w=/--nodelist=/;s/^-C=/--constraint=/;s/^-t=/--time=/;s/^-G=/--gpus=/;s/^-c=/--cpus-per-task=/' \
    -e 's/^-N=/--nodes=/'; }
for list in both array_only; do
    declare -n options_list=$list
    for i in "${!options_list[@]}"; do options_list[i]=$(normalise <<<"${options_list[i]}"); done
    unset -n options_list
done

# Every header is read: the count of experiments, and what would fail (printed, not fatal).
plan_status=0
plan=$("$bin" -q batch "$root" ${config[@]+"${config[@]}"} --dry-run ${batch[@]+"${batch[@]}"}) || plan_status=$?
counts=$(tail -n 1 <<<"$plan")
if [[ ! $counts =~ ^([0-9]+)\ experiments: ]]; then
    echo "$plan" >&2
    exit "$((plan_status ? plan_status : 1))"
fi
experiments=${BASH_REMATCH[1]}
grep '^fail ' <<<"$plan" >&2 || true
tasks=$(((experiments + per_task - 1) / per_task))

report_dir=$root  # where the shard reports go: --out, else ROOT
for ((i = 0; i < ${#batch[@]}; i++)); do
    case ${batch[i]} in
        --out) report_dir=${batch[i + 1]:-$root} ;;
        --out=*) report_dir=${batch[i]#--out=} ;;
    esac
done
report_dir=$(realpath -m "$report_dir")

array=(sbatch --parsable --array="0-$((tasks - 1))%$throttle" ${both[@]+"${both[@]}"}
    ${array_only[@]+"${array_only[@]}"} "$here/$array_script" "$root" ${config[@]+"${config[@]}"}
    ${batch[@]+"${batch[@]}"})
if ((sweep)); then
    after=(sbatch --parsable --dependency=afterany:ARRAY_JOB_ID ${both[@]+"${both[@]}"}
        ${array_only[@]+"${array_only[@]}"} "$here/dask_batch.sbatch" "$root" ${config[@]+"${config[@]}"}
        ${batch[@]+"${batch[@]}"})
else
    after=(sbatch --parsable --dependency=afterany:ARRAY_JOB_ID ${both[@]+"${both[@]}"} "$here/summary.sbatch"
        "$report_dir" ARRAY_JOB_ID)
fi

if ((dry_run)); then
    echo "$counts"
    echo "$experiments experiments, $tasks array tasks"
    printf '%q ' "${array[@]}"; echo
    printf '%q ' "${after[@]}"; echo
    exit 0
fi
mkdir -p slurm-logs  # SLURM does not create the folder of --output
array_id=$("${array[@]}")
array_id=${array_id%%;*}
after=("${after[@]//ARRAY_JOB_ID/$array_id}")
after_id=$("${after[@]}")
echo "array job $array_id: $experiments experiments in $tasks tasks, at most $throttle at once ($array_script)"
echo "$( ((sweep)) && echo "Dask sweep" || echo summary) job ${after_id%%;*}: runs when every array task has ended" \
    "(afterany); report: $report_dir/batch_report.json"
echo "while it runs: $bin status $report_dir --job $array_id"
