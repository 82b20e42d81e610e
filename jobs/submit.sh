#!/usr/bin/env bash
# Submit the whole pipeline to SLURM: an array job (one task per chunk of experiments, at most
# THROTTLE running at once), then the Dask sweep job with --dependency=afterok on the array. The
# sweep runs `batch` over the whole root on a Dask cluster: it skips what the array built, builds
# whatever changed since, and writes the combined batch_report.json.
#
#   jobs/submit.sh ROOT [CONFIG] [--per-task K] [--throttle M] [--dry-run] [-- batch options]
#
#   --per-task K   experiments per array task (default 4)
#   --throttle M   array tasks running at once (default 8): the %M of --array=0-N%M
#   --dry-run      print the two sbatch commands instead of submitting them
# Everything after `--` goes to `rvc-index batch` in both jobs (e.g. --out DIR --set k=v --only 'a*').
# Set RVC_INDEX_PYTHON to the environment's python if `python` is not it.
set -euo pipefail

usage="usage: jobs/submit.sh ROOT [CONFIG] [--per-task K] [--throttle M] [--dry-run] [-- batch options]"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${RVC_INDEX_PYTHON:-python}
root=${1:?$usage}
shift
config=tips
if [[ $# -gt 0 && $1 != -* ]]; then config=$1; shift; fi
per_task=4
throttle=8
dry_run=0
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --per-task) per_task=${2:?$usage}; shift 2 ;;
        --throttle) throttle=${2:?$usage}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done

# The plan table: two header lines, then one line per experiment.
plan=$("$python" -m rvc_index -q batch "$root" --config "$config" --dry-run ${extra[@]+"${extra[@]}"})
experiments=$(($(printf '%s\n' "$plan" | wc -l) - 2))
if ((experiments < 1)); then
    echo "rvc-index: no experiments under $root" >&2
    exit 1
fi
tasks=$(((experiments + per_task - 1) / per_task))

array=(sbatch --parsable --array="0-$((tasks - 1))%$throttle" "$here/index_array.sbatch" "$root" "$config"
    ${extra[@]+"${extra[@]}"})
sweep=(sbatch --parsable --dependency=afterok:ARRAY_JOB_ID "$here/dask_batch.sbatch" "$root" "$config"
    ${extra[@]+"${extra[@]}"})

if ((dry_run)); then
    echo "$experiments experiments, $tasks array tasks"
    printf '%q ' "${array[@]}"; echo
    printf '%q ' "${sweep[@]}"; echo
    exit 0
fi
mkdir -p slurm-logs  # SLURM does not create the folder of --output
array_id=$("${array[@]}")
array_id=${array_id%%;*}
sweep[3]=--dependency=afterok:$array_id
sweep_id=$("${sweep[@]}")
echo "array job $array_id: $experiments experiments in $tasks tasks, at most $throttle at once"
echo "Dask sweep job ${sweep_id%%;*}: runs after every array task succeeded (afterok)"
