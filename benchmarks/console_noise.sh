#!/usr/bin/env bash
# Console noise of the demo segmentation run at tiny sizes (a couple of minutes on 2 cores):
# prints the number of console lines and of warning lines (Python/log warnings and
# TensorFlow's C++ "I0000/E0000" probing lines). Usage, from the project root, with the
# venv active: bash benchmarks/console_noise.sh [log file]
set -uo pipefail
log="${1:-/tmp/console_noise.log}"
params="demo_data.generator.n_per_class=6,demo_data.generator.n_ct_per_class=2,demo_data.generator.cxr_size=64,demo_data.generator.ct_size=64,preprocessing.resize.size=64"
for model in unet fcn deeplabv3; do
    params="$params,segmentation.$model.data.image_size=32,segmentation.$model.data.batch_size=4,segmentation.$model.training.epochs=2,segmentation.$model.model.base_filters=4"
done
export KEDRO_DISABLE_TELEMETRY=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
start=$(date +%s)
kedro run --pipelines=segmentation --params="$params" > "$log" 2>&1
status=$?
echo "exit status $status, $(( $(date +%s) - start )) s wall"
echo "console lines: $(wc -l < "$log")"
echo "warning lines: $(grep -cE 'WARNING|Warning|^[EIW]0000' "$log")"
grep -nE 'WARNING|Warning|^[EIW]0000' "$log" | cut -c1-160
