#!/bin/sh
# gpu-check on CPU (dry run), 2026-12-02 16:40 UTC: every command, in order, as run.
PYTHON=/work/main/.venv/bin/python

# matrix: weights folder for the quantized preset
.venv/bin/python benchmarks/gpu_check.py --build_model data/models/tiny-blip2-t5 /tmp/gpu-check-dry/models/tiny-blip2-t5-weights --device cpu
# launch: DeepSpeed's CPU Adam, built in the background
.venv/bin/python -c 'import time; started = time.perf_counter(); from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load(); print(f'"'"'CPU Adam ready in {time.perf_counter() - started:.1f} s'"'"')'
# matrix: a skeleton (config and processor; the recipe draws the weights on the GPU)
PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c 'from alt_text_recipes.random_weights import build_random_model; build_random_model("data/models/tiny-blip2-opt", "/tmp/gpu-check-dry/models/tiny-blip2-opt-skeleton", weights=False)'
# probe
.venv/bin/python benchmarks/matmul_probe.py --out /tmp/gpu-check-dry/probe.json --device cpu
# matrix: a skeleton (config and processor; the recipe draws the weights on the GPU)
PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c 'from alt_text_recipes.random_weights import build_random_model; build_random_model("data/models/tiny-blip2-t5", "/tmp/gpu-check-dry/models/tiny-blip2-t5-skeleton", weights=False)'
# launch: the model
PYTHONPATH=recipes:$PYTHONPATH "$PYTHON" -c 'from alt_text_recipes.random_weights import build_random_model; build_random_model("data/models/tiny-blip2-opt", "/tmp/gpu-check-dry/models/tiny-blip2-opt-2layers", layers=2, device="cpu")'
# throughput
.venv/bin/python benchmarks/throughput.py --config recipes/configs/tiny/full_ft.yaml --model_config data/models/tiny-blip2-opt --variants plain_fair ours --images 8 --steps 1 --warmup_steps 1 --batch_size 4 --workers 1 --peak_json benchmarks/results/gpu-dry-cpu/probe.json --out benchmarks/results/gpu-dry-cpu/throughput.json
# matrix: qlora
.venv/bin/python recipes/qlora.py --config recipes/configs/matrix/qlora.yaml --output_dir /tmp/gpu-check-dry/runs/qlora --model_name_or_path data/models/tiny-blip2-t5 --use_cpu true --max_steps 1 --logging_steps 1 --memory_report_steps 1 --report_to none --max_train_samples 128 --model_name_or_path /tmp/gpu-check-dry/models/tiny-blip2-t5-weights --max_steps 1 --logging_steps 1 --memory_report_steps 1 --save_final_model false --report_to none --disable_tqdm true --show_examples 0 --eval_strategy no --per_device_train_batch_size 4 --gradient_accumulation_steps 1
# matrix: baseline
.venv/bin/python recipes/full_ft.py --config recipes/configs/matrix/baseline.yaml --output_dir /tmp/gpu-check-dry/runs/baseline --model_name_or_path data/models/tiny-blip2-opt --use_cpu true --max_steps 1 --logging_steps 1 --memory_report_steps 1 --report_to none --max_train_samples 128 --model_name_or_path /tmp/gpu-check-dry/models/tiny-blip2-opt-skeleton --max_steps 1 --logging_steps 1 --memory_report_steps 1 --save_final_model false --report_to none --disable_tqdm true --show_examples 0 --eval_strategy no --per_device_train_batch_size 4 --gradient_accumulation_steps 1
# launch: fsdp4
.venv/bin/python -m accelerate.commands.launch --config_file accelerate_configs/fsdp4.yaml --num_processes 1 recipes/full_ft.py --config recipes/configs/multi_gpu/fsdp4_bf16.yaml --model_name_or_path /tmp/gpu-check-dry/models/tiny-blip2-opt-2layers --output_dir /tmp/gpu-check-dry/runs/launch_fsdp4 --max_steps 2 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --max_train_samples 64 --logging_steps 1 --memory_report_steps 1 --report_to none --save_strategy no --disable_tqdm true
# pytest
.venv/bin/python -m pytest tests/test_gpu.py tests/test_real_width.py -k gpu -q -p no:cacheprovider -rA --durations=0
# launch: ds_zero2_offload
.venv/bin/python -m accelerate.commands.launch --config_file accelerate_configs/ds_zero2_offload.yaml --num_processes 1 --deepspeed_config_file /tmp/gpu-check-dry/runs/launch_ds_zero2_offload/deepspeed_cpu.json recipes/full_ft.py --config recipes/configs/matrix/cpu_offload.yaml --model_name_or_path /tmp/gpu-check-dry/models/tiny-blip2-opt-2layers --output_dir /tmp/gpu-check-dry/runs/launch_ds_zero2_offload --max_steps 2 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 --max_train_samples 64 --logging_steps 1 --memory_report_steps 1 --report_to none --save_strategy no --disable_tqdm true
