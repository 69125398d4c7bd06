#!/usr/bin/env bash
# The pending GPU work (H100/H200), in order of value:
#   1. fine-tune the shipped unet-mnv2 at 640x960 on all 150 training cars with the cosine
#      schedule run to its end, holding out the shipped model's own 10 validation cars
#      (--val-cars shipped). The CPU campaign did this once and shipped it (0.996061, 2026-12-06);
#      from that model, a GPU run is a second pass (more epochs: EPOCHS; or a larger SIZE);
#   2. continue the general model (issue 12: cars on any background) for many more epochs than
#      a CPU can give (trained at 544x736, run at 448x608 with a second look at 704x960, as the
#      shipped one; GENERAL_SIZE and GENERAL_SECOND_LOOK try others), when the outdoor photos
#      came along (WILD, 19 MB);
#   3. the prediction throughput of the shipped and the new model (issue 13's figure): the fast
#      path (runs found on the GPU) against the plain path as the baseline, in the same run.
# The photos travel packed, in two parts, because one call carries at most 64 MiB:
#   python benchmarks/gpu_data.py pack .gpu/packed --parts 2 --quality 70 --test-photos 8
# then two calls of the device tool, each carrying one part (.gpu/ is git-ignored, so the data
# unpacked into .gpu/carvana stays on the machine between calls while it is warm):
#   run: bash benchmarks/gpu_session.sh data .gpu/packed/part0      carry [".gpu/packed/part0"]
#   run: bash benchmarks/gpu_session.sh all .gpu/packed/part1       carry [".gpu/packed/part1", ".gpu/wild"]
# where .gpu/wild is a copy of ../shared/data/cars_in_the_wild (cp -r, 19 MB; part1 + it < 64 MiB).
# Where segmentation_models_pytorch is missing there, carry its wheel in .whl/ as well.
# Tested on the CPU with tiny sizes:
#   DEVICE=cpu SIZE=64x96 TRAIN_SECONDS=60 EPOCHS=1 BATCH=4 THROUGHPUT=8 GENERAL_SIZE=64x96 \
#       GENERAL_PREDICT_SIZE=96x128 GENERAL_SECOND_LOOK=128x160 GENERAL_SECONDS=60 GENERAL_EPOCHS=1 DATA=../shared/data/carvana \
#       WILD=../shared/data/cars_in_the_wild PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh all
# The stage `throughput` skips both trainings; the test photos travel in part0:
#   run: bash benchmarks/gpu_session.sh throughput .gpu/packed/part0   carry [".gpu/packed/part0"]
# Results go to $OUT: train.log, summary.json, metrics.csv, curves.png, model.safetensors, and
# the benchmark lines. The Dice it prints is on re-encoded photos; the figure to report comes
# from `carmask evaluate --cars val --model OUT/model.safetensors` on the originals afterwards.
set -u
STAGE=${1:-all}
PART=${2:-}
OUT=${OUT:-gpu-output}
DATA=${DATA:-.gpu/carvana}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-640x960}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}
EPOCHS=${EPOCHS:-10}  # ~35 s an epoch for 2,400 photos at 68 photos/s: the schedule ends in time
BATCH=${BATCH:-16}
THROUGHPUT=${THROUGHPUT:-2000}
WILD=${WILD:-.gpu/wild}
# trained at the second look's size, where the photos it misses most are looked at (the shipped
# average's r13 and r14 trained there; docs/training-history.md)
GENERAL_SIZE=${GENERAL_SIZE:-544x736}
GENERAL_PREDICT_SIZE=${GENERAL_PREDICT_SIZE:-448x608}
GENERAL_SECOND_LOOK=${GENERAL_SECOND_LOOK:-704x960}
GENERAL_SECONDS=${GENERAL_SECONDS:-240}
GENERAL_EPOCHS=${GENERAL_EPOCHS:-40}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export CARMASK_CARVANA=$DATA
PYTHON=${PYTHON:-python3}
stamp() { echo "== $(date +%T) $*"; }

if [ -n "$PART" ]; then
    stamp "unpack $PART"
    $PYTHON benchmarks/gpu_data.py unpack "$PART" "$DATA" --workers "$(nproc)" || exit 1
fi
[ "$STAGE" = data ] && { ls "$DATA/train" | wc -l; stamp done; exit 0; }

[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PYTHON -c "import torch, torchvision, lightning, segmentation_models_pytorch as smp; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', \
lightning.__version__, 'smp', smp.__version__, torch.cuda.is_available())" || exit 1
echo "photos: $(ls "$DATA/train" | wc -l), masks: $(ls "$DATA/train_masks" | wc -l)"

if [ "$STAGE" != throughput ]; then
stamp "training ${TRAIN_SECONDS}s at $SIZE"
minutes=$((TRAIN_SECONDS / 60)); seconds=$((TRAIN_SECONDS % 60))
timeout $((TRAIN_SECONDS + 120)) $PYTHON -m carmask train --data "$DATA" --model unet-mnv2 \
    --out "$OUT/run" --size "$SIZE" --epochs "$EPOCHS" --batch "$BATCH" --lr 5e-4 \
    --val-cars shipped --seed 0 --init shipped --no-pretrained --half --workers "$(($(nproc) - 1))" \
    --patience 100 --max-time "00:00:$(printf %02d $minutes):$(printf %02d $seconds)" \
    > "$OUT/train.log" 2>&1
echo "train exit $?"
grep -v "it/s\]" "$OUT/train.log" | tail -n 15
for f in model.safetensors summary.json metrics.csv curves.png; do
    cp "$OUT/run/$f" "$OUT/" 2>/dev/null
done
cat "$OUT/summary.json" 2>/dev/null

if [ -f "$WILD/index.csv" ]; then
    stamp "general model ${GENERAL_SECONDS}s at $GENERAL_SIZE"
    minutes=$((GENERAL_SECONDS / 60)); seconds=$((GENERAL_SECONDS % 60))
    timeout $((GENERAL_SECONDS + 120)) $PYTHON -m carmask -v train-general --data "$DATA" \
        --wild "$WILD" --out "$OUT/general" --init general --size "$GENERAL_SIZE" \
        --predict-size "$GENERAL_PREDICT_SIZE" --second-look "$GENERAL_SECOND_LOOK" \
        --epochs "$GENERAL_EPOCHS" --samples 480 --batch "$BATCH" --lr 3e-4 \
        --workers "$(($(nproc) - 1))" \
        --max-time "00:00:$(printf %02d $minutes):$(printf %02d $seconds)" > "$OUT/general.log" 2>&1
    echo "general exit $?"
    grep -v "it/s\]" "$OUT/general.log" | tail -n 5
    for f in model.safetensors summary.json metrics.csv curves.png; do
        cp "$OUT/general/$f" "$OUT/general-$f" 2>/dev/null
    done
fi
fi  # the trainings

for model in shipped "$OUT/run"; do
    [ -f "$OUT/run/model.safetensors" ] || [ "$model" = shipped ] || continue
    stamp "throughput, $model"
    # --fast: the plain path (baseline), then the fast one, each photos/s, the ratio, same bytes?
    timeout 300 $PYTHON benchmarks/bench_predict.py --device "$DEVICE" --sizes --model "$model" \
        --throughput-count "$THROUGHPUT" --batch "$BATCH" --skip-memory --fast \
        | tee -a "$OUT/bench.jsonl"
done
stamp done
