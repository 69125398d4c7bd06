#!/usr/bin/env bash
# The background training campaign (issue 24): long CPU runs that use the cores while people
# read and write code. Start it when work on the project starts, check it before work stops.
#
#   benchmarks/campaign.sh start    start the current run, or resume it from its last checkpoint
#   benchmarks/campaign.sh status   is it running, how far, its validation Dice so far
#   benchmarks/campaign.sh stop     stop it (it resumes from its last checkpoint next time)
#
# The run trains in the background (nohup, nice 19), so it yields the CPU to interactive work,
# writes a checkpoint every 50 steps (a few minutes: a kill loses little) and logs the
# full-resolution validation Dice four times an epoch. Runs live in runs/campaign/ (git-ignored).
# Where a run's checkpoints are gone, it says so and starts again from the best file it finds:
# its best checkpoint, else the model it fine-tunes. Nothing of this runs in CI.
#
# The current run: the studio model on all 150 training cars at 640x960, bf16 where the CPU has
# it, the shipped model's 10 validation cars held out, a cosine run to its end.
# Overrides (the tests use them for a tiny run): CAMPAIGN_DIR, CAMPAIGN_RUN, CAMPAIGN_DATA,
# CAMPAIGN_ARGS (replaces the run's training options), CAMPAIGN_INIT, CARMASK (the command).
set -euo pipefail
cd "$(dirname "$0")/.."

CAMPAIGN_DIR=${CAMPAIGN_DIR:-runs/campaign}
RUN=${CAMPAIGN_RUN:-studio-all150-640}
DATA=${CAMPAIGN_DATA:-../shared/data/carvana}
INIT=${CAMPAIGN_INIT:-shipped}
CARMASK=${CARMASK:-.venv/bin/carmask}
OUT="$CAMPAIGN_DIR/$RUN"
PIDFILE="$OUT/run.pid"
LOG="$OUT/train.log"

if grep -qE ' (amx_bf16|avx512_bf16)' /proc/cpuinfo 2>/dev/null; then PRECISION=bf16-mixed; else PRECISION=32; fi
DEFAULT_ARGS="--model unet-mnv2 --size 640x960 --batch 2 --epochs 3 --lr 3e-4 --no-pretrained
  --val-cars shipped --val-every 0.25 --patience 1000 --workers 1 --precision $PRECISION
  --half --cache $CAMPAIGN_DIR/cache"
ARGS=${CAMPAIGN_ARGS:-$DEFAULT_ARGS}

running() { [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

validation_figures() {  # every full-resolution validation Dice logged so far, all sessions
  local files=("$OUT"/logs/version_*/metrics.csv)
  [[ -e ${files[0]} ]] || { echo "  no validation yet"; return; }
  awk -F, 'FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
           col["val_dice_full"] && $col["val_dice_full"] != "" {
             printf "  step %6d  epoch %s  val Dice (1280x1918) %s\n", $col["step"], $col["epoch"], $col["val_dice_full"] }' \
      "${files[@]}" | sort -n -k2 | uniq
}

start() {
  mkdir -p "$OUT"
  if running; then echo "$RUN: already running (pid $(cat "$PIDFILE")); log: $LOG"; return; fi
  if [[ -f $OUT/model.safetensors ]]; then
    echo "$RUN: finished; model: $OUT/model.safetensors"; validation_figures; return
  fi
  [[ -x $CARMASK ]] || { echo "error: $CARMASK not found: run 'make venv' first" >&2; exit 1; }
  local ckpt="$OUT/checkpoints"
  if [[ -f $ckpt/last.ckpt || -f $ckpt/latest.ckpt ]]; then
    echo "$RUN: resuming from its last checkpoint"
  elif [[ -f $ckpt/best.ckpt ]]; then
    echo "$RUN: the last checkpoints are gone; starting again from its best checkpoint"
    cp "$ckpt/best.ckpt" "$ckpt/latest.ckpt"
  elif [[ -f $LOG ]]; then
    echo "$RUN: its checkpoints are gone; starting again from $INIT"
  else
    echo "$RUN: starting from $INIT"
  fi
  # shellcheck disable=SC2086  # ARGS is a list of options
  HF_HUB_OFFLINE=1 nohup nice -n 19 "$CARMASK" train --data "$DATA" --out "$OUT" --init "$INIT" \
      --resume $ARGS >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  echo "$RUN: training in the background (pid $!); log: $LOG"
}

status() {
  if running; then echo "$RUN: running (pid $(cat "$PIDFILE"))"
  elif [[ -f $OUT/model.safetensors ]]; then echo "$RUN: finished; model: $OUT/model.safetensors"
  else echo "$RUN: not running; 'benchmarks/campaign.sh start' resumes it"; fi
  [[ -d $OUT/checkpoints ]] && ls -l --time-style=+%H:%M "$OUT/checkpoints" | awk 'NR > 1 { print "  checkpoint", $6, $7 }'
  validation_figures
  [[ -f $LOG ]] && { echo "  last log line:"; tail -c 2000 "$LOG" | tr '\r' '\n' | grep -v '^\s*$' | tail -1 | cut -c1-160; }
  return 0
}

stop() {
  if running; then kill "$(cat "$PIDFILE")"; echo "$RUN: stopped; 'start' resumes it"; else echo "$RUN: not running"; fi
}

case "${1:-status}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
