"""Write alt text with a (fine-tuned) model of any family: real generation, not teacher-forced argmax."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from datasets import Dataset
from PIL import Image
from tqdm.auto import tqdm

from alt_text_recipes.data.images import to_rgb
from alt_text_recipes.train.collators import ChatCollator
from alt_text_recipes.train.families import family_of


@torch.no_grad()
def generate_alt_text(
    model: torch.nn.Module,
    processor,
    images: Sequence[Image.Image],
    prompt: str = "",
    max_new_tokens: int = 40,
    num_beams: int = 1,
    **generate_kwargs: Any,
) -> list[str]:
    """Generate one caption per image, conditioned as in training: BLIP-2 `<image>`×N, BOS, prompt; chat
    families the user turn (image, instruction) and the assistant's opening."""
    images = [to_rgb(image) for image in images]
    family = family_of(model)
    if family.uses_chat_template:
        chat = ChatCollator(processor, family, prompt)  # the training prompt and its stop tokens
        inputs = processor(
            images=[[image] for image in images],
            text=[chat.prompt] * len(images),
            padding="longest",
            padding_side="left",
            return_tensors="pt",
        )
        stops = chat.stop_token_ids()
        if stops:
            generate_kwargs.setdefault("eos_token_id", [processor.tokenizer.eos_token_id, *stops])
        generate_kwargs.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    else:
        inputs = processor(
            images=images,
            text=[prompt.strip()] * len(images),
            padding="longest",
            padding_side="left",
            return_tensors="pt",
        )
    # The vision tower is registered first: its first floating parameter gives the pixel dtype
    # (quantized layers hold integer storage, their norms and embeddings stay floating point).
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    inputs = {key: value.to(parameter.device) for key, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
    was_training = model.training
    model.eval()
    # use_cache: training with activation checkpointing switches the cache off in the config.
    generated = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        num_beams=num_beams,
        do_sample=False,
        use_cache=True,
        **generate_kwargs,
    )
    model.train(was_training)
    if not model.config.get_text_config().is_encoder_decoder:
        generated = generated[:, inputs["input_ids"].shape[1] :]  # decoder-only output repeats the input
    return [text.strip() for text in processor.batch_decode(generated, skip_special_tokens=True)]


def generate_for_dataset(
    model: torch.nn.Module,
    processor,
    dataset: Dataset,
    batch_size: int = 8,
    progress: bool = False,
    **generation: Any,
) -> list[str]:
    """Alt text for every row of `dataset` (column `image`), decoding one batch of images at a time."""
    captions: list[str] = []
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress, leave=False):
        images = dataset[start : start + batch_size]["image"]
        captions.extend(generate_alt_text(model, processor, images, **generation))
    return captions
