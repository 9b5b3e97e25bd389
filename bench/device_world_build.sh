#!/usr/bin/env bash
# The GPU recipe of the shipped shapes world's base models, plus a GPU check of the training
# stage. One H100: about 8 minutes. Run from the repository root; results go to $OUT.
#   bash bench/device_world_build.sh            # then, on any machine (rewards, quality on CPU):
#   capo world build init=$OUT/gw base_steps=0 overwrite=true
# On a machine without diffusers, put its wheel (and importlib_metadata's) in .whl/.
# WORLD_ARGS overrides the build's keys (a CPU smoke test: WORLD_ARGS="size=tiny device=cpu ...").
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
