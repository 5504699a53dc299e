#!/usr/bin/env bash
# Every GPU check and benchmark, on a machine with one CUDA GPU, from the repository root:
#   bash benchmarks/run_gpu.sh [LOG_DIR] [STEP ...]
# STEP is any of: versions tests suite train_step train_throughput train_throughput_large pretrain_step predict
# pipeline pipeline_host extract extract_plain extract_scaling toy scale, or a group: measure (the training
# throughput and region-feature measurements, whose time limits add up to 580 s, under the 600 s of one device call:
# versions train_throughput train_throughput_large predict pipeline extract extract_scaling) or all (every step but suite,
# the default). suite is the whole test suite, which needs pytest-xdist and pytest-timeout.
# Each step's full output goes to LOG_DIR/<step>.log (default LOG_DIR: gpu-logs); a step that fails or runs past
# its time limit is reported and the next one runs. The project is used from src/ (PYTHONPATH), so nothing needs
# installing beyond the dependencies in pyproject.toml. The extract steps time the default `lxmert` preset (the Caffe
# extraction), which resizes with OpenCV: where `import cv2` fails they time it with the torch resize instead (pixels
# within 1e-4 of OpenCV's), and say so. The scale step trains the toy world for a few steps with each config of
# recipes/accelerate/ that needs a GPU (FSDP, DeepSpeed ZeRO-2 and ZeRO-3, on this machine's one GPU) and with
# gradient checkpointing; the DeepSpeed ones only where `import deepspeed` works (it is no dependency of the
# project), saying so otherwise. The synthetic training data of the train_throughput steps is built once in
# LOG_DIR/throughput-data and shared by both.
set -uo pipefail
log_dir=${1:-gpu-logs}
shift || true
steps=("$@")
measure=(versions train_throughput train_throughput_large predict pipeline extract extract_scaling)
all=(versions tests train_step train_throughput train_throughput_large pretrain_step predict pipeline pipeline_host
    extract extract_plain extract_scaling toy scale)
[ ${#steps[@]} -eq 0 ] && steps=(all)
expanded=()
for step in "${steps[@]}"; do
    case $step in
    measure) expanded+=("${measure[@]}") ;;
    all) expanded+=("${all[@]}") ;;
    *) expanded+=("$step") ;;
    esac
done
steps=("${expanded[@]}")
mkdir -p "$log_dir"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

run_step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$log_dir/$name.log" 2>&1
    local status=$?
    grep -v -e "^\[gw[0-9]*\] .*PASSED" -e BenchmarkWarning -e "warner(" "$log_dir/$name.log" | tail -n 40
    echo "== $name: exit $status after $((SECONDS - start)) s"
}

for step in "${steps[@]}"; do
    case $step in
    versions)
        run_step versions 30 "$python" -c "import datasets, pyarrow, torch, transformers
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())
print('transformers', transformers.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)" ;;
    tests)
        run_step tests 420 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
    suite)
        run_step suite 390 "$python" -m pytest -v -p no:cacheprovider -n 12 --timeout 240 --durations 15 -rfE tests ;;
    train_step)
        run_step train_step 240 "$python" benchmarks/train_step.py --device cuda --batch-sizes 8 32 128 \
            --steps 20 --warmup 3 ;;
    train_throughput)  # the paper's batch, every lever (one compiled row: each pays a compilation of about a minute)
        run_step train_throughput 150 "$python" benchmarks/train_throughput.py --batch-sizes 32 --steps 8 \
            --warmup 3 --rounds 1 --num-images 1000 --workdir "$log_dir/throughput-data" \
            --rows baseline faithful default bf16 static_shapes static_compile fused_adamw no_sync loader ;;
    train_throughput_large)  # the large batches, the rows that compile nothing
        run_step train_throughput_large 100 "$python" benchmarks/train_throughput.py --batch-sizes 256 128 \
            --steps 8 --warmup 3 --rounds 1 --num-images 1000 --workdir "$log_dir/throughput-data" \
            --rows baseline faithful default bf16 static_shapes fused_adamw no_sync loader ;;
    predict)
        run_step predict 45 "$python" benchmarks/predict.py --device cuda --num-images 400 --batch-size 64 \
            --num-workers 0 4 --rounds 2 ;;
    pretrain_step)
        run_step pretrain_step 240 "$python" benchmarks/pretrain_step.py --device cuda --batch-sizes 32 256 \
            --steps 20 --warmup 3 ;;
    pipeline)
        run_step pipeline 90 "$python" benchmarks/pipeline.py --device cuda --questions-b1 64 \
            --questions-b64 1024 ;;
    pipeline_host)
        run_step pipeline_host 120 "$python" benchmarks/pipeline.py --device cuda --host-only --questions-b1 64 \
            --questions-b64 1024 --repeats 7 ;;
    extract | extract_plain | extract_scaling)
        resize=()
        if ! "$python" -c "import cv2" 2>/dev/null; then
            resize=(--resize-backend torch)
            echo "== $step: OpenCV is missing here, resizing with torch (the lxmert preset's resize, within 1e-4)"
        fi ;;&
    extract)  # each speed option against fp32 (TF32 off), with the agreement columns, then files through workers
        run_step extract 90 "$python" benchmarks/extract.py --device cuda --cuda-images 96 --batch-size 16 \
            --workers 8 "${resize[@]}" ;;
    extract_plain)  # the same on the random detector as initialized: what near-tied scores cost the box agreement
        run_step extract_plain 120 "$python" benchmarks/extract.py --device cuda --cuda-images 64 --batch-size 16 \
            --options fp32 bf16 --no-loading --no-decisive "${resize[@]}" ;;
    extract_scaling)  # 1 and 2 processes sharing the GPU, writing one store
        run_step extract_scaling 75 "$python" benchmarks/extract_scaling.py --detector full --device cuda \
            --images 64 --processes 1 2 --batch-size 4 --num-workers 2 ;;
    toy)
        rm -rf /tmp/lxmert-hf-toy-gpu
        run_step toy 300 bash -c "time accelerate launch --num_processes 1 recipes/vqa.py \
            --output_dir /tmp/lxmert-hf-toy-gpu" ;;
    scale)
        few_steps=(--max_steps 30 --logging_steps 10 --eval_strategy no --save_strategy no
            --load_best_model_at_end false --show_examples 0)
        for config in fsdp deepspeed_zero2 deepspeed_zero3; do
            if [[ $config == deepspeed* ]] && ! "$python" -c "import deepspeed" 2>/dev/null; then
                echo "== scale_$config: DeepSpeed is not installed here, skipped (carry a deepspeed wheel to run it)"
                continue
            fi
            rm -rf "/tmp/lxmert-hf-scale-$config"
            run_step "scale_$config" 300 accelerate launch --config_file "recipes/accelerate/$config.yaml" \
                --num_processes 1 recipes/vqa.py "${few_steps[@]}" --output_dir "/tmp/lxmert-hf-scale-$config"
        done
        rm -rf /tmp/lxmert-hf-scale-checkpointing
        run_step scale_checkpointing 300 accelerate launch --config_file recipes/accelerate/single_gpu.yaml \
            recipes/vqa.py "${few_steps[@]}" --gradient_checkpointing true \
            --output_dir /tmp/lxmert-hf-scale-checkpointing ;;
    *)
        echo "unknown step: $step (see the list at the top of this file)" >&2
        exit 2 ;;
    esac
done
