#!/usr/bin/env bash
# The ChatGOT suite's GPU rows in one go: the 10M and 100M sweeps side by side (a 10M step
# leaves the GPU mostly idle), each row's best run evaluated on val and test. The row files,
# sweep reports and logs are packed into <out>/chatgot.tar.gz.
#
# Run: bash experiments/chatgot/gpu_rows.sh OUT [RUN_LIMIT_S] [extra suite.py flags, e.g. --smoke]
set -u
out=${1:?give an output folder}
limit=${2:-240}
shift $(($# < 2 ? $# : 2))
mkdir -p "$out/chatgot"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
python3 experiments/chatgot/suite.py sweep char_10m subword_10m --parallel=6 \
    --budget_s="$limit" --results="$out/chatgot/results" "$@" >"$out/chatgot/10m.log" 2>&1 &
python3 experiments/chatgot/suite.py sweep char_100m subword_100m --parallel=4 \
    --budget_s="$limit" --results="$out/chatgot/results" "$@" >"$out/chatgot/100m.log" 2>&1 &
wait
grep -h '^{' "$out"/chatgot/*.log
tar -czf "$out/chatgot.tar.gz" -C "$out" chatgot
