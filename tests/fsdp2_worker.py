"""One rank of the CPU FSDP2 check (launched by tests/test_distributed.py through torchrun).

accelerate engages FSDP only on GPUs, so on CPU this exercises what the project owns with PyTorch FSDP2
directly: the layer classes named in accelerate_configs/fsdp4.yaml shard the tiny BLIP-2, a Q-Former in
fp32 beside bf16 layers trains, and the gathered full state dict (or LoRA adapter) reloads.

    torchrun --nproc_per_node 2 tests/fsdp2_worker.py OUT.json [--lora]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from alt_text_recipes.data.sources import load_caption_dataset
from alt_text_recipes.train.collators import Blip2Collator
from alt_text_recipes.train.modeling import load_trained

REPO_ROOT = Path(__file__).resolve().parents[1]


def wrap_classes() -> set[str]:
    config = yaml.safe_load((REPO_ROOT / "accelerate_configs/fsdp4.yaml").read_text())
    return set(config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(","))


def main(out_path: str, lora: bool) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model, processor = load_trained(REPO_ROOT / "data/models/tiny-blip2-opt")
    reference = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.to(torch.bfloat16)
    model.qformer.float()  # BLIP-2's Q-Former in fp32 beside bf16 layers; query tokens stay bf16 in the root unit
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    total = sum(p.numel() for p in model.parameters())

    classes = wrap_classes()
    # Innermost units first (a Q-Former layer before the Q-Former), then the root, as auto-wrap does.
    wrapped = [module for module in reversed(list(model.modules())) if type(module).__name__ in classes]
    for module in wrapped:
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    local = sum(p.to_local().numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})

    examples = load_caption_dataset(str(REPO_ROOT / "data/gourmetgram-mini"))["train"].select(
        range(4 * rank, 4 * rank + 4)
    )
    batch = Blip2Collator(processor, is_encoder_decoder=False)(list(examples))
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    result = {
        "rank": rank,
        "world": world,
        "wrapped": len(wrapped),
        "wrapped_classes": sorted({type(m).__name__ for m in wrapped}),
        "total_params": total,
        "local_params": local,
        "dtypes": dtypes,
        "losses": losses,
    }
    if rank == 0:
        if lora:
            from peft import get_peft_model_state_dict

            adapter = get_peft_model_state_dict(model, state_dict=full)
            fresh, _ = load_trained(REPO_ROOT / "data/models/tiny-blip2-opt")
            from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

            fresh = get_peft_model(fresh, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
            set_peft_model_state_dict(fresh, adapter)
            reloaded = get_peft_model_state_dict(fresh)
            result["adapter_tensors"] = len(adapter)
            result["adapter_reloads"] = all(torch.equal(reloaded[k].float(), adapter[k].float()) for k in adapter)
            result["adapter_trained"] = any(v.abs().sum().item() > 0 for k, v in adapter.items() if "lora_B" in k)
        else:
            fresh, _ = load_trained(REPO_ROOT / "data/models/tiny-blip2-opt")
            missing, unexpected = fresh.load_state_dict({k: v.float() for k, v in full.items()}, strict=False)
            result["missing"], result["unexpected"] = list(missing), list(unexpected)
            result["reloaded_equal"] = all(torch.equal(fresh.state_dict()[k], v.float()) for k, v in full.items())
            result["changed_by_training"] = any(
                not torch.allclose(full[k].float(), reference[k].float(), atol=1e-3) for k in full if k in reference
            )
        Path(out_path).write_text(json.dumps(result))
    else:
        Path(out_path + f".rank{rank}").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], "--lora" in sys.argv)
