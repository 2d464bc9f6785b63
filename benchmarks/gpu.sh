#!/usr/bin/env bash
# Step time and peak memory of every rule against backprop on VGG16 (32×32 inputs), batch 100, on CUDA:
# once in float32, once under bfloat16 autocast, and once in float32 with every variant's step compiled
# as CUDA graphs (torch.compile mode reduce-overhead); then the ViT and the ConvNeXt at batch 256 (fused and
# one forward-backward sweep of the generic loop). Each run writes one JSON file into OUTPUT_DIR.
#
#   benchmarks/gpu.sh OUTPUT_DIR [more `dualprop bench` flags, e.g. --repeats 50 --compile]
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTPUT_DIR [dualprop bench flags]" >&2
    exit 2
fi
out="$1"
shift
mkdir -p "$out"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python}"

common=(--model vgg16 --batch-size 100 --device cuda --dtype float32)
"$python" -m dualprop bench "${common[@]}" --autocast none --output "$out/vgg16_b100_fp32.json" "$@"
"$python" -m dualprop bench "${common[@]}" --autocast bf16 --output "$out/vgg16_b100_bf16.json" "$@"
"$python" -m dualprop bench "${common[@]}" --autocast none --compile reduce-overhead \
    --variants bp,dpT-fused,dpT-fw3 --output "$out/vgg16_b100_fp32_cudagraphs.json" "$@"
for model in vit convnext; do
    "$python" -m dualprop bench --model "$model" --batch-size 256 --device cuda --dtype float32 \
        --variants bp,dpT-fused,dpT-fwbw1 --output "$out/${model}_b256_fp32.json" "$@"
done
