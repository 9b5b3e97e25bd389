#!/usr/bin/env bash
# The GPU recipe of the shipped shapes world's base models, plus a GPU check of the training
# stage. One H100: about 8 minutes. Run from the repository root; results go to $OUT.
#   bash bench/device_world_build.sh            # then, on any machine (rewards, quality on CPU):
#   capo world build init=$OUT/gw base_steps=0 overwrite=true
# On a machine without diffusers, put its wheel (and importlib_metadata's) in .whl/.
# WORLD_ARGS overrides the build's keys (a CPU smoke test: WORLD_ARGS="size=tiny device=cpu ...").
#
# Measured on one H100 (2026-11-26, the keys below): VAE 1,366 steps x 256 in 90 s (PSNR 33.3 dB);
# SDXL-like 1,475 steps x 512 in 150 s (GenEval-like 0.318, sampled at 119 img/s on the GPU);
# SD3-like 1,636 steps x 512 in 150 s (0.212, 180 img/s); the whole build 411 s. The steps
# are host-bound: a profile (bench/device_profile_pretrain.py) shows ~100 ms of CPU per
# step (about 1,000 kernel launches; dispatch on this VM's CPU) against ~19 ms of GPU work
# at batch 512, so a larger batch (2,048-4,096, with a larger lr) is nearly free there and
# is the next thing to try; CUDA graphs / torch.compile would cut the launches.
set -uo pipefail
OUT=${OUT:-/tmp/capo-device}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
WORLD_ARGS=${WORLD_ARGS:-"device=cuda pool=393216 workers=16 vae_steps=3000 vae_batch=256 vae_minutes=1.5 base_steps=30000 base_batch=512 base_minutes=2.5 rewards=false"}
rm -rf /tmp/gw
timeout ${BUILD_TIMEOUT:-480} python3 -m capo world build out=/tmp/gw $WORLD_ARGS > "$OUT/build.log" 2>&1
echo "build rc=$?"
tr '\r' '\n' < "$OUT/build.log" | grep -v "it/s" | tail -20
tar czf "$OUT/gw.tgz" -C /tmp gw
timeout ${TEST_TIMEOUT:-60} python3 -m pytest -q -x -p no:cacheprovider tests/test_pipeline.py \
  -k "train_objectives or resume_equals" 2>&1 | tail -8
