#!/usr/bin/env bash
# Train one arm of the encoder ablation end to end and evaluate it with the same commands as every other arm.
#
#   tools/run_arm.sh configs/train/gaitbase_wild_compact_casiab.yaml            # results in runs/arms/<config>/
#   OUT=$OUT ONLY_TRAIN_EVAL=1 tools/run_arm.sh configs/train/gpu/gaitbase_wild_synthetic_full_casiab.yaml   # a lent GPU
#
# ONLY_TRAIN_EVAL=1 stops after CASIA-B, USF and the calibration (the real-footage runs need the detector cache of this
# machine: run them here afterwards on the weights brought back).
#
# Resumable at every step: training continues from its newest checkpoint, and each evaluation whose JSON exists is
# skipped. On a fresh machine (no runs/), training continues from the arm's parked checkpoint in weights/parked/, if
# one was committed (`tools/train.py --config CONFIG --park weights/parked` before a session ends). Writes weights.pt
# (+ .onnx), casiab.json and usf.json (+ embeddings), calibration.json (the open-set threshold, written into the
# weights by tools/calibrate.py), wild_kth.json, wild_shared.json and, for Mesh-Gait, synthetic_3d.json. The synthetic
# set a config names is made first if missing (300 walkers for 240 trained: 5-20 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1
name=$(basename "$config" .yaml)
out=${OUT:-runs/arms/$name}
python=${PYTHON:-.venv/bin/python}
shared=${GAITSTREAM_SHARED:-../shared}
mkdir -p "$out"
log() { echo "$(date +%H:%M:%S) $name: $*"; }

# The set's first train_fraction (0.8) of subjects train (engines.data.synthetic.split_subjects): 240 -> 300 made.
read -r synthetic subjects branch_3d < <("$python" -c "
from engines.data.synthetic import SyntheticSpec
from engines.train import load_train_config
config = load_train_config('$config')
c = config.synthetic
print(f'{c.root} {round(c.last_subject / SyntheticSpec.train_fraction)} {config.branch_3d is not None}' if c else '')")
if [[ -n "$synthetic" && ! -f "$synthetic/meta.json" ]]; then
  log "making the synthetic set $synthetic ($subjects walkers)"
  "$python" tools/make_synthetic.py --out "$synthetic" --subjects "$subjects" --elevation-max 45 \
    --distance-scale 1 2.5 --no-progress
fi
log "training"
"$python" tools/train.py --config "$config" --resume --unpark weights/parked --no-progress
[[ -f "$out/weights.pt" ]] || "$python" tools/train.py --config "$config" --export-weights "$out/weights.pt"
[[ -f "$out/weights.onnx" ]] || "$python" tools/export.py "$out/weights.pt" --no-check
weights=$(realpath "$out/weights.pt")
run() { local json=$1; shift; [[ -f "$out/$json" ]] && { log "$json exists"; return; }; log "$json"; "$@"; }
run casiab_embeddings.npz "$python" tools/eval.py --weights "$weights" --open-set --no-progress --json "$out/casiab.json" \
  --dump-embeddings "$out/casiab_embeddings.npz"
run usf_embeddings.npz "$python" tools/eval.py --weights "$weights" --usf "$shared/assets/datasets/usf-humanid" \
  --json "$out/usf.json" --dump-embeddings "$out/usf_embeddings.npz"
# The documented calibration (README, "Calibrating on your cameras"): the largest threshold at which the match stage,
# at the default margin ratio, names at most 10 % of strangers in 10-person galleries of CASIA-B and of USF. KTH and
# the shared clips are not used to choose it: they check it.
if [[ ! -f "$out/calibration.json" ]]; then
  margin=$("$python" -c "from stages.match import FALLBACK_MARGIN_RATIO; print(FALLBACK_MARGIN_RATIO)")
  "$python" tools/matcher_rules.py "$out/casiab_embeddings.npz" "$out/usf_embeddings.npz" \
    --calibrate-decision "$margin" --gallery-size 10 --json "$out/calibration.json"
  accept=$("$python" -c "import json; print(json.load(open('$out/calibration.json'))['decision_calibration']['accept_distance'])")
  "$python" tools/calibrate.py "$out/weights.pt" --accept-distance "$accept" --margin-ratio "$margin" \
    --source "tools/matcher_rules.py --calibrate-decision $margin --gallery-size 10 (CASIA-B, USF): $out/calibration.json"
fi
if [[ "${ONLY_TRAIN_EVAL:-0}" == 1 ]]; then log "done (training, CASIA-B, USF, calibration): $out"; exit 0; fi
kth="$shared/assets/datasets/kth-walking/manifest.csv"
run wild_kth.json "$python" tools/eval_wild.py --manifest "$kth" --set "stages.gait.encoder=$weights" \
  --no-progress --json "$out/wild_kth.json"
run wild_shared.json "$python" tools/eval_wild.py --manifest "$shared/assets/videos/manifest.csv" \
  --set "stages.gait.encoder=$weights" --no-progress --json "$out/wild_shared.json"
if [[ "${branch_3d:-False}" == True ]]; then
  run synthetic_3d.json "$python" tools/eval.py --weights "$weights" --synthetic "$synthetic" --no-progress \
    --json "$out/synthetic_3d.json"
fi
log "done: $out"
