#!/usr/bin/env bash
# Tier-E cells of eval/sbmoe_recipe_encoder.py on a lent GPU machine (device tool), which has no network and
# takes at most 64 MiB per call: the wheels its image lacks, the seven data sets and the exact fp32
# minilm-l3 weights (69.6 MB, over the limit alone) travel in two back-to-back calls to one warm machine.
# Pack here, once (paths ignored through .git/info/exclude), and leave the committed results (34 MB) out of
# the calls while they run (tier-E cells still travel, so finished cells are skipped there):
#   bash eval/recipe_encoder_device.sh wheels    # needs the package registry; 20.9 MB on 2026-12-07
#   bash eval/recipe_encoder_device.sh pack
#   bash eval/recipe_encoder_device.sh slim      # ... the device calls ...   bash eval/recipe_encoder_device.sh unslim
# then on the device, from the repo root, within the 30 s a machine stays warm between the calls:
#   bash eval/recipe_encoder_device.sh setup                 # carry .whl .dev/a
#   bash eval/recipe_encoder_device.sh run SECONDS ARGS...   # carry .dev/b; ARGS: one or more
#        "runner options" strings, each run side by side, e.g. "--stage search --sets medquad --lrs 0.0001"
# `run` writes $OUT/cells.tar.xz (the finished cells, packed against their qids files), each runner's log
# and a GPU utilisation trace; unpack the cells with `tar xJf cells.tar.xz -C eval/results/sbmoe_recipe`.
# A cell cut off by SECONDS resumes from its last epoch checkpoint in the next `run` on the same warm machine
# (2026-12-04: three MedQuAD cells side by side reached epoch 12 of 30 in 8.7 min, so a cell needs two calls).
set -euo pipefail
# Outside the checkout: the copy sent with each call replaces the checkout, and a folder ignored only through
# .git/info/exclude (.dev) did not outlive the call that carried it; /tmp and the pip installs did.
LIVE=/tmp/sbmoe-live
export SBMOE_DATA=$LIVE/data SBMOE_CACHE=$LIVE/cache HF_HUB_OFFLINE=1 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
SETS="medquad squad scifact arguana cranfield cacm msmarco-dl19-mini"
MODEL=eval/cache/sbmoe/models/minilm-l3
WHEELS="sentence-transformers==6.3.0 datasets==5.2.0 faiss-cpu==1.15.1 ir_measures==0.4.3"
# What the device image lacks (its package list: the device library's KINDS.md; its Python is 3.12): the four
# above, at the versions this CPU ran, and their needs that the image does not hold. datasets 5.2.0 wants
# pyarrow >= 24, which the image met on 2026-12-04.
DOWNLOADS="$WHEELS pytrec-eval-terrier==0.5.11 dill==0.4.1 multiprocess==0.70.19"
PART1=26000000  # bytes of the weights in the first call: wheels + data + part 1 stay under 64 MiB

ignore() { mkdir -p .git/info && { grep -qx "$1" .git/info/exclude 2>/dev/null || echo "$1" >> .git/info/exclude; }; }

case "${1:-}" in
wheels)
  ignore /.whl/ && mkdir -p .whl
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $DOWNLOADS
  du -cb .whl/* | tail -1
  ;;
pack)
  ignore /.dev/ && mkdir -p .dev/a .dev/b
  (cd ../shared/data && tar cf - $SETS) | xz -6 > .dev/a/data.tar.xz
  tar cf .dev/a/model_meta.tar --exclude=model.safetensors -C "$(dirname $MODEL)" minilm-l3
  head -c $PART1 $MODEL/model.safetensors > .dev/a/weights.part1
  tail -c +$((PART1 + 1)) $MODEL/model.safetensors > .dev/b/weights.part2
  sha256sum $MODEL/model.safetensors | cut -c1-64 > .dev/b/weights.sha256
  du -cb .whl/* .dev/a/* | tail -1
  ;;
slim)  # untrack and ignore every results file but the tier-E cells; a cell committed meanwhile stays tracked
  git ls-files eval/results | grep -v -- '__E-' > .dev/untracked.txt
  sed 's|^|/|' .dev/untracked.txt >> .git/info/exclude
  git rm --cached -q --pathspec-from-file=.dev/untracked.txt
  git ls-files -z | du -cb --files0-from=- | tail -1
  ;;
unslim)
  git reset -q --pathspec-from-file=.dev/untracked.txt
  grep -v -x -F -f <(sed 's|^|/|' .dev/untracked.txt) .git/info/exclude > .dev/exclude || true
  cp .dev/exclude .git/info/exclude && git status --short | head
  ;;
setup)
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -m pip install -q --no-index --find-links .whl $WHEELS
  rm -rf "$LIVE" && mkdir -p "$LIVE/data" "$LIVE/cache/models"
  tar xJf .dev/a/data.tar.xz -C "$LIVE/data"
  tar xf .dev/a/model_meta.tar -C "$LIVE/cache/models"
  cp .dev/a/weights.part1 "$LIVE/"
  python3 -c "import sys; sys.path.insert(0, 'eval'); from sbmoe_recipe import versions; import datasets, torch; \
print(versions(), 'datasets', datasets.__version__, torch.cuda.get_device_name())"
  python3 eval/recipe_encoder_smoke.py
  ;;
run)
  seconds=$2; shift 2
  cat "$LIVE/weights.part1" .dev/b/weights.part2 > "$LIVE/cache/models/minilm-l3/model.safetensors"
  echo "$(cat .dev/b/weights.sha256)  $LIVE/cache/models/minilm-l3/model.safetensors" | sha256sum -c
  cells=$LIVE/out && mkdir -p "$cells" "$LIVE/work" eval/cache
  ln -sfn "$LIVE/work" eval/cache/sbmoe_recipe_encoder  # training folders and checkpoints, kept between calls
  mkdir -p "$cells/cells" && cp eval/results/sbmoe_recipe/cells/*__E-*.json "$cells/cells/"  # skipped there
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$OUT/gpu.csv" &
  sampler=$! && runners=() && k=0
  for options in "$@"; do
    # shellcheck disable=SC2086
    timeout "$seconds" python3 eval/sbmoe_recipe_encoder.py $options --out "$cells" > "$OUT/runner$k.log" 2>&1 &
    runners+=($!) && k=$((k + 1))
  done
  for pid in "${runners[@]}"; do wait "$pid" || echo "runner $pid ended with $?"; done
  kill "$sampler" || true
  tar cJf "$OUT/cells.tar.xz" -C "$cells" .
  tail -n 3 "$OUT"/runner*.log
  ;;
*)
  echo "usage: $0 wheels | pack | slim | unslim | setup | run SECONDS 'runner options'..." >&2; exit 2
  ;;
esac
