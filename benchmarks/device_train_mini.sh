#!/usr/bin/env bash
# Train mini_v2 on a lent GPU machine in pieces of at most ~9 minutes, bringing the state back.
#
# Run through the device tool from the repository root, with the data and the previous state
# carried (see docs/model-card.md, "Training on a GPU"):
#
#   bash benchmarks/device_train_mini.sh [MINUTES_TOTAL]
#
# Expects shared/data/ct (the training CTs) inside the checkout and, to continue a run,
# train/mini_v2.pt, .json, .loss.csv and .state.pt from the previous piece. Writes the same
# files (and a timing line) under $OUT, which the tool copies back; copy them to train/ and
# run the script again to continue. The recipe is train-mini's default, so a piece trained
# here and one trained on the CPU continue each other (--resume refuses any other recipe).
set -euo pipefail
total_minutes="${1:-60}"
out="${OUT:?run through the device tool: \$OUT is where the results come back}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, monai; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, monai.__version__, torch.cuda.get_device_name())"
mkdir -p "$out/train"
resume=()
if [ -f train/mini_v2.state.pt ]; then
  cp train/mini_v2.pt train/mini_v2.json train/mini_v2.loss.csv train/mini_v2.state.pt "$out/train/"
  resume=(--resume)
fi
# one piece: Ctrl-C (SIGINT) after 500 s saves the state and stops (the tool allows 10 minutes per command)
start=$(date +%s)
timeout -s INT 500 python3 -c "import sys; from napari_meddift.cli import main; sys.exit(main(sys.argv[1:]))" train-mini --data shared/data --out "$out/train/mini_v2.pt" \
  --minutes "$total_minutes" --device cuda --threads 8 "${resume[@]}" || status=$?
echo "piece took $(( $(date +%s) - start )) s (exit ${status:-0}); state in \$OUT/train" | tee "$out/train/piece.txt"
