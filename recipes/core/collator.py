"""Turn (image, caption) examples into BLIP-2 training batches.

Everything goes through the processor: it puts `num_query_tokens` `<image>` tokens in front of the
text, and the model writes the Q-Former outputs into exactly those positions. A caption tokenized
with the bare tokenizer has no `<image>` tokens, and a model trained on it never sees the image.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from .images import to_rgb
from .inputs import is_prepared

IGNORE_INDEX = -100


class AltTextCollator:
    """Build `pixel_values`, `input_ids`, `attention_mask` and `labels` for BLIP-2.

    Decoder-only language models (OPT): the sequence is `<image>`×N, BOS, prompt, caption, EOS; labels
    copy it with -100 on the image tokens, BOS, prompt and padding, so only caption and EOS are learnt.
    Encoder-decoder language models (Flan-T5): the encoder gets `<image>`×N and the prompt; the caption
    (ending in EOS) is only the decoder target.
    """

    def __init__(self, processor: Any, is_encoder_decoder: bool, prompt: str = "", max_caption_tokens: int = 64):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.prompt = prompt.strip()
        self.max_caption_tokens = max_caption_tokens
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token.content)
        probe = self.tokenizer("a")["input_ids"]
        # Some tokenizers (T5) append EOS themselves, others (OPT) never do.
        self.eos_suffix = "" if probe[-1] == self.tokenizer.eos_token_id else self.tokenizer.eos_token
        # Image tokens + whatever the tokenizer puts before the text (BOS) + the prompt's tokens.
        self.prefix_length = processor.num_query_tokens + len(self._prompt_ids())

    def _prompt_ids(self) -> list[int]:
        ids = self.tokenizer(self.prompt)["input_ids"]
        if ids and ids[-1] == self.tokenizer.eos_token_id and not self.eos_suffix:
            ids = ids[:-1]  # an appended EOS is not part of the prefix the caption follows
        return ids

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [example["text"].strip() for example in examples]
        if all(is_prepared(example["image"]) for example in examples):
            # Already upright, RGB and at the input size (inputs.prepare_for_training): the processor
            # only rescales and normalises them.
            images, image_kwargs = [example["image"] for example in examples], {"do_resize": False}
        else:
            images, image_kwargs = [to_rgb(example["image"]) for example in examples], {}
        if self.is_encoder_decoder:
            return self._encoder_decoder_batch(images, captions, image_kwargs)
        return self._decoder_only_batch(images, captions, image_kwargs)

    def _decoder_only_batch(self, images: list[Image.Image], captions: list[str],
                            image_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        texts = [self._join_prompt(caption) + self.eos_suffix for caption in captions]
        batch = self.processor(
            images=images,
            **image_kwargs,
            text=texts,
            padding="longest",
            padding_side="right",
            truncation=True,
            max_length=self.prefix_length + self.max_caption_tokens,
            return_tensors="pt",
        )
        labels = batch["input_ids"].clone()
        labels[:, : self.prefix_length] = IGNORE_INDEX
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        labels[batch["input_ids"] == self.image_token_id] = IGNORE_INDEX
        batch["labels"] = labels
        return dict(batch)

    def _encoder_decoder_batch(self, images: list[Image.Image], captions: list[str],
                               image_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = self.processor(images=images, text=[self.prompt] * len(images), padding="longest",
                               return_tensors="pt", **image_kwargs)
        targets = self.tokenizer(
            [caption + self.eos_suffix for caption in captions],
            padding="longest",
            padding_side="right",
            truncation=True,
            max_length=self.max_caption_tokens,
            return_tensors="pt",
        )
        labels = targets["input_ids"].clone()
        labels[targets["attention_mask"] == 0] = IGNORE_INDEX
        batch["labels"] = labels
        return dict(batch)

    def _join_prompt(self, caption: str) -> str:
        return f"{self.prompt} {caption}" if self.prompt else caption
