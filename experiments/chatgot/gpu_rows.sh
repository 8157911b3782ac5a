#!/usr/bin/env bash
# The ChatGOT suite's GPU rows in one go: the 10M and 100M sweeps side by side (a 10M step
# leaves the GPU mostly idle), each row's best run evaluated on val and test. Each half packs
# the row files, sweep reports and logs so far into <out>/chatgot-<half>.tar.gz when it ends.
#
# Run: bash experiments/chatgot/gpu_rows.sh OUT [RUN_LIMIT_S] [extra suite.py flags, e.g. --smoke]
set -u
out=${1:?give an output folder}
limit=${2:-150}
shift $(($# < 2 ? $# : 2))
mkdir -p "$out/chatgot"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
half() {  # half NAME PARALLEL ROWS...
    local name=$1 parallel=$2
    shift 2
    python3 experiments/chatgot/suite.py sweep "$@" --parallel="$parallel" --budget_s="$limit" \
        --results="$out/chatgot/results" $extra >"$out/chatgot/$name.log" 2>&1
    grep -h '^{' "$out/chatgot/$name.log"
    tar -czf "$out/chatgot-$name.tar.gz" -C "$out" chatgot
}
extra="$*"
half 10m 6 char_10m subword_10m &
half 100m 4 char_100m subword_100m &
wait
