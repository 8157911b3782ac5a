#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, for a GPU machine whose python3 already holds
# PyTorch but has no network: Craft's other dependencies come as wheels in .whl/ (see
# benchmarks/RESULTS.md for how they are fetched). Each part gets what is left of a time budget,
# logs to $OUT/<part>.log, and the run goes on when a part fails.
#
# Run: OUT=/tmp/gpu BUDGET_S=540 [PARTS='decode tests'] benchmarks/gpu_checks.sh
set -u
OUT=${OUT:-/tmp/craft-gpu}
BUDGET_S=${BUDGET_S:-540}
PARTS=${PARTS:-all}  # or some of: decode step-10m step-124m-b12 tests cold-start step-124m-b32 diffusion chatgot
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
started=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"

part() {  # part NAME LIMIT_S COMMAND...: run unless the budget is spent; keep its log
    local name=$1 limit=$2 left
    shift 2
    [[ $PARTS == all || " $PARTS " == *" $name "* ]] || return
    left=$((BUDGET_S - ($(date +%s) - started)))
    if ((left < 45)); then
        echo "== $name: skipped, ${left}s of the budget left"
        return
    fi
    ((limit > left)) && limit=$left
    local t0=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? in $(($(date +%s) - t0))s (limit ${limit}s)"
    grep -E '^\{' "$OUT/$name.log" >>"$OUT/results.jsonl"
    tail -n 12 "$OUT/$name.log"
}

part decode 110 python3 benchmarks/generate.py --device=cuda --config=gpt2 --rounds=3
part step-10m 200 python3 benchmarks/train_step.py --device=cuda --only=gpu-10m-char \
    --no-remat-memory --steps=20 --rounds=5
part step-124m-b12 180 python3 benchmarks/train_step.py --device=cuda --only=gpu-124m-b12 \
    --no-remat-memory --no-graphs --steps=10 --rounds=3
part tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_step.py::test_cuda_graph_mode_step_equals_eager_step
# Compile time to the first step, cold and warm inductor cache: Craft by regions and whole
# against torch.compile(model) (issue: <= 1.5x its compile time at 124M), then steady speed.
part cold-start 480 python3 benchmarks/cold_start.py --device=cuda --shapes=10m,124m \
    --rounds=3 --steps=5 --threads="$(nproc)"
part step-124m-b32 150 python3 benchmarks/train_step.py --device=cuda --only=gpu-124m-b32 \
    --no-remat-memory --no-graphs --steps=5 --rounds=3
# The MNIST diffusion GPU config (a longer budget of its own: BUDGET_S=2400 PARTS=diffusion),
# then its sample quality over 10,000 samples (the judge trains first if data/judges lacks it).
part diffusion 2200 bash -c 'python3 -m craft.main fetch mnist &&
    python3 -m craft.main --gin_file=gin/mnist_diffusion_gpu.gin \
        --gin.RunConfig.output_dir="'"$OUT"'/runs" --gin.MetricsConfig.progress_bar=False &&
    python3 -m craft.main evaluate --checkpoint="$(ls -d '"$OUT"'/runs/mnist_diffusion_gpu/*/* | tail -1)" &&
    cp "$(ls -d '"$OUT"'/runs/mnist_diffusion_gpu/*/* | tail -1)/samples.png" '"$OUT"'/diffusion_samples.png'
# The ChatGOT suite's GPU rows (experiments/chatgot/gpu_rows.sh): results come back as
# chatgot.tar.gz. Needs the GOT data prepared in data/ (carried: nothing can be fetched there).
part chatgot 900 bash experiments/chatgot/gpu_rows.sh "$OUT"
echo "== done in $(($(date +%s) - started))s"
