#!/usr/bin/env bash
# The GPU check: run it whenever a GPU machine is lent (one call, ≤ 8 minutes on one GPU).
#   bash bench/gpu_check.sh            # from the repository root, with the project's venv
# Prints the environment, runs the GPU-marked tests, times the engine on CUDA (ResNet-18
# HPS, the CelebA-40 shape, SegNet-MTAN on a 288×384 NYUv2 batch; fp32 and bf16; loop vs
# batched Jacobian; each as × EW ratios measured in one run) and trains one epoch of the
# NYUv2 and CelebA fixtures through `mtlx run --gpus-per-worker 1` with samples/s.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MTLX=${MTLX:-.venv/bin/mtlx}
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)'));" \
       "run this on the lent GPU machine (device tool), not here" >&2
  exit 2
fi
section() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%T)"; }
status=0

section environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'PY'
import torch, ray
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"devices {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, ray {ray.__version__}, "
      f"NCCL {torch.cuda.nccl.version() if hasattr(torch.cuda, 'nccl') else '?'}")
PY

section "GPU-marked tests"
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py || status=1

BENCH="timeout 150 $PY bench/engine_speed.py --device cuda --steps 6 --warmup 2 --rounds 1"
section "engine on CUDA: ResNet-18 HPS, T=3 (fp32, bf16; auto Jacobian)"
$BENCH --setup resnet18 --only ew,pcgrad,mgda,cagrad,nash_mtl,imtl_g,db_mtl,aligned_mtl || status=1
$BENCH --setup resnet18 --precision bf16 --only ew,pcgrad,cagrad,nash_mtl || status=1
section "engine on CUDA: CelebA-40 shape, loop vs batched Jacobian"
for mode in loop batched auto; do
  $BENCH --setup celeba40 --jacobian-mode $mode --only ew,pcgrad,imtl_g || status=1
done
section "engine on CUDA: SegNet-MTAN 288x384, fp32 vs bf16"
for p in fp32 bf16; do
  $BENCH --setup segnet_nyuv2 --precision $p --only ew,pcgrad,cagrad,nash_mtl || status=1
done

section "mtlx run on fixtures, --gpus-per-worker 1"
tmp=$(mktemp -d)
"$PY" - "$tmp" <<'PY'
import sys
from envs.fixtures.dense import write_nyuv2
from envs.fixtures.files import write_celeba
write_nyuv2(f"{sys.argv[1]}/nyuv2", n_train=64, n_test=16, size=(288, 384))
write_celeba(f"{sys.argv[1]}/celeba")
PY
for spec in "nyuv2 $tmp/nyuv2" "celeba $tmp/celeba"; do
  set -- $spec
  start=$(date +%s.%N)
  timeout 150 "$MTLX" run --benchmark "$1" --data-root "$2" --methods pcgrad --seeds 0 --epochs 1 \
      --workers 1 --gpus-per-worker 1 --out "$tmp/out-$1" train.eval_every=1 || status=1
  "$PY" - "$tmp/out-$1" "$start" <<'PY'
import sys, time, pandas as pd
runs = pd.read_parquet(f"{sys.argv[1]}/runs")
m = pd.read_parquet(f"{sys.argv[1]}/metrics")
t = m[(m.split == "train") & (m.metric == "epoch_time_s")].value.iloc[0]
r = runs.iloc[0]
samples = int(r.steps_done) * int(r.batch_size)
print(f"{r.benchmark}: status {r.status}, device {r.device}, {int(r.steps_done)} steps × batch "
      f"{int(r.batch_size)}, epoch {t:.1f} s = {samples / t:.0f} samples/s (training + "
      f"evaluation), wall {time.time() - float(sys.argv[2]):.0f} s")
PY
done
rm -rf "$tmp"
section "done, status $status"
exit $status
