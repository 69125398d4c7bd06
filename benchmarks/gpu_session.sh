#!/usr/bin/env bash
# One GPU session (H100/H200): the prediction throughput benchmark, then training unet-mnv2 at
# 640x960 from the shipped model's weights, then the throughput of the new model. As run on
# 2026-11-27 it made today's shipped model from the 320x480 one (docs/models.md); run again, it
# fine-tunes the shipped model further.
# The validation cars are the shipped model's own (--val-cars shipped): the data folder has grown
# from 100 to 160 cars, and re-creating fold 0 over it would hold out cars the model trained on.
# Needs the packed data (benchmarks/gpu_data.py pack .gpu/carvana-packed) and, where
# segmentation_models_pytorch is missing, its wheel in .whl/. Results go to $OUT.
#
#   TRAIN_SECONDS=360 EPOCHS=26 bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-gpu-output}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
EPOCHS=${EPOCHS:-26}
DATA=${DATA:-/tmp/carvana}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export CARMASK_CARVANA=$DATA
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, lightning, segmentation_models_pytorch as smp; \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', \
lightning.__version__, 'smp', smp.__version__, torch.cuda.get_device_name())" || exit 1
stamp() { echo "== $(date +%T) $*"; }

stamp unpack
python3 benchmarks/gpu_data.py unpack .gpu/carvana-packed "$DATA" --workers 16 || exit 1

stamp "throughput, shipped model"
timeout 150 python3 benchmarks/bench_predict.py --device cuda --sizes --throughput-count 2000 \
    --batch 16 --skip-memory | tee "$OUT/bench-shipped.jsonl"

stamp "training ${TRAIN_SECONDS}s"
minutes=$((TRAIN_SECONDS / 60)); seconds=$((TRAIN_SECONDS % 60))
timeout $((TRAIN_SECONDS + 100)) python3 -m carmask train --data "$DATA" --model unet-mnv2 \
    --out /tmp/run640 --size 640x960 --epochs "$EPOCHS" --batch 16 --lr 5e-4 --val-cars shipped \
    --seed 0 --init shipped --no-pretrained --half --workers 15 --patience 100 \
    --max-time "00:00:$(printf %02d $minutes):$(printf %02d $seconds)" > "$OUT/train.log" 2>&1
echo "train exit $?"
grep -v "it/s\]" "$OUT/train.log" | tail -n 15
for f in model.safetensors summary.json metrics.csv curves.png; do
    cp "/tmp/run640/$f" "$OUT/" 2>/dev/null
done
cat "$OUT/summary.json" 2>/dev/null

if [ -f /tmp/run640/model.safetensors ]; then
    stamp "throughput, new model"
    timeout 150 python3 benchmarks/bench_predict.py --device cuda --sizes --throughput-count 2000 \
        --batch 16 --skip-memory --model /tmp/run640 | tee "$OUT/bench-640.jsonl"
fi
stamp done
