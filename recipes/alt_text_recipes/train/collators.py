"""Turn (image, caption) examples into training batches.

Everything goes through the processor: it puts the model's `<image>` tokens into the text (BLIP-2:
`num_query_tokens` in front; Idefics2: the resampler's latents between boundary tokens; LLaVA: one per
patch), and the model writes the image features into exactly those positions. A caption tokenized with
the bare tokenizer has no `<image>` tokens, and a model trained on it never sees the image.

`Blip2Collator` builds BLIP-2's bare-caption batches; `ChatCollator` the chat families' (the caption is
the assistant's answer to an instruction); `make_collator` picks by the model's family.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.images import to_rgb
from alt_text_recipes.data.input_pipeline import is_prepared
from alt_text_recipes.train.families import DEFAULT_INSTRUCTION, ModelFamily, family_of

IGNORE_INDEX = -100


class Blip2Collator:
    """Build `pixel_values`, `input_ids`, `attention_mask` and `labels` for BLIP-2.

    Decoder-only language models (OPT): the sequence is `<image>`×N, BOS, prompt, caption, EOS; labels
    copy it with -100 on the image tokens, BOS, prompt and padding, so only caption and EOS are learnt.
    Encoder-decoder language models (Flan-T5): the encoder gets `<image>`×N and the prompt; the caption
    (ending in EOS) is only the decoder target. Either way a caption is cut to `max_caption_tokens` tokens
    and EOS follows the cut, so the model learns to stop on long captions too.
    """

    def __init__(self, processor: Any, is_encoder_decoder: bool, prompt: str = "", max_caption_tokens: int = 64):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.prompt = prompt.strip()
        self.max_caption_tokens = max_caption_tokens
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token.content)
        probe = self.tokenizer("a")["input_ids"]
        # Some tokenizers (T5) append EOS themselves, and keep it when they truncate; others (OPT) never
        # do, and the collator appends it after truncating.
        self.tokenizer_appends_eos = probe[-1] == self.tokenizer.eos_token_id
        # Image tokens + whatever the tokenizer puts before the text (BOS) + the prompt's tokens.
        self.prefix_length = processor.num_query_tokens + len(self._prompt_ids())

    def _prompt_ids(self) -> list[int]:
        ids = self.tokenizer(self.prompt)["input_ids"]
        if ids and ids[-1] == self.tokenizer.eos_token_id and self.tokenizer_appends_eos:
            ids = ids[:-1]  # an appended EOS is not part of the prefix the caption follows
        return ids

    @property
    def _eos_allowance(self) -> int:
        """Room for EOS within `max_length` when the tokenizer adds it itself (it truncates the text, not it)."""
        return 1 if self.tokenizer_appends_eos else 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        captions = [example["text"].strip() for example in examples]
        images, image_kwargs = batch_images(examples)
        if self.is_encoder_decoder:
            return self._encoder_decoder_batch(images, captions, image_kwargs)
        return self._decoder_only_batch(images, captions, image_kwargs)

    def _decoder_only_batch(
        self, images: list[Image.Image], captions: list[str], image_kwargs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        # The caption is cut to max_caption_tokens before EOS goes on: EOS in the text would be cut with it.
        batch = self._ending_in_eos(
            self.processor(
                images=images,
                **image_kwargs,
                text=[self._join_prompt(caption) for caption in captions],
                padding="longest",
                padding_side="right",
                truncation=True,
                max_length=self.prefix_length + self.max_caption_tokens + self._eos_allowance,
                return_tensors="pt",
            )
        )
        labels = batch["input_ids"].clone()
        labels[:, : self.prefix_length] = IGNORE_INDEX
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        labels[batch["input_ids"] == self.image_token_id] = IGNORE_INDEX
        batch["labels"] = labels
        return dict(batch)

    def _encoder_decoder_batch(
        self, images: list[Image.Image], captions: list[str], image_kwargs: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        batch = self.processor(
            images=images, text=[self.prompt] * len(images), padding="longest", return_tensors="pt", **image_kwargs
        )
        targets = self._ending_in_eos(
            self.tokenizer(
                captions,
                padding="longest",
                padding_side="right",
                truncation=True,
                max_length=self.max_caption_tokens + self._eos_allowance,
                return_tensors="pt",
            )
        )
        labels = targets["input_ids"].clone()
        labels[targets["attention_mask"] == 0] = IGNORE_INDEX
        batch["labels"] = labels
        return dict(batch)

    def _join_prompt(self, caption: str) -> str:
        return f"{self.prompt} {caption}" if self.prompt else caption

    def _ending_in_eos(self, encoding):
        """EOS after each right-padded row's last token, unless the tokenizer already put it there."""
        if self.tokenizer_appends_eos:
            return encoding
        ids, mask = encoding["input_ids"], encoding["attention_mask"]
        ends = mask.sum(dim=1)
        rows = torch.arange(len(ends))
        encoding["input_ids"] = torch.nn.functional.pad(ids, (0, 1), value=self.tokenizer.pad_token_id)
        encoding["attention_mask"] = torch.nn.functional.pad(mask, (0, 1), value=0)
        encoding["input_ids"][rows, ends] = self.tokenizer.eos_token_id
        encoding["attention_mask"][rows, ends] = 1
        return encoding


def batch_images(examples: list[dict[str, Any]]) -> tuple[list, dict[str, Any]]:
    """The examples' images and the image-processor options they need."""
    if all(is_prepared(example["image"]) for example in examples):
        # Already upright, RGB and at the input size (inputs.prepare_for_training): the processor
        # only rescales and normalises them.
        return [example["image"] for example in examples], {"do_resize": False}
    return [to_rgb(example["image"]) for example in examples], {}


def chat_prompt(processor: Any, instruction: str = "") -> str:
    """The user turn (one image, the instruction) and the assistant's opening, as the chat template writes them."""
    return processor.apply_chat_template(_conversation(instruction), add_generation_prompt=True, tokenize=False)


def _conversation(instruction: str, answer: str | None = None) -> list[dict[str, Any]]:
    turns = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": instruction.strip() or DEFAULT_INSTRUCTION}],
        }
    ]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


class ChatCollator:
    """Build training batches for chat models (Idefics2/3, LLaVA): the user turn holds the image and the
    instruction, the caption is the assistant's answer, and only the answer is learnt.

    The prompt (with the processor's `<image>` tokens) and the answer are tokenized apart and joined, as
    at generation time, when the model continues the tokenized prompt. Labels are -100 on the prompt,
    its image tokens and padding; the answer ends with the template's end-of-turn token, or EOS.
    """

    _PLACEHOLDER = "\u2063CAPTION\u2063"

    def __init__(self, processor: Any, family: ModelFamily, instruction: str = "", max_caption_tokens: int = 64):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.family = family
        self.max_caption_tokens = max_caption_tokens
        if getattr(processor, "chat_template", None) is None:
            raise RecipeError(
                f"the {family.name} processor has no chat template; add one (chat_template.jinja "
                "in the model folder) or use a model that ships it."
            )
        self.prompt = chat_prompt(processor, instruction)
        self.answer_prefix, self.answer_suffix = self._answer_frame(instruction)
        suffix_ids = self.tokenizer(self.answer_suffix, add_special_tokens=False)["input_ids"]
        stops = {self.tokenizer.eos_token_id, *self.stop_token_ids()}
        # The answer must end in a token that stops generation: the template's end of turn, else EOS.
        self.tail_ids = (
            suffix_ids if suffix_ids and suffix_ids[-1] in stops else suffix_ids + [self.tokenizer.eos_token_id]
        )

    def _answer_frame(self, instruction: str) -> tuple[str, str]:
        """What the template writes around an answer: (before, after), trailing whitespace dropped."""
        full = self.processor.apply_chat_template(_conversation(instruction, self._PLACEHOLDER), tokenize=False)
        if not full.startswith(self.prompt) or self._PLACEHOLDER not in full:
            raise RecipeError(
                f"the {self.family.name} chat template does not write the assistant's answer after "
                "its generation prompt; the caption cannot be the answer."
            )
        before, after = full[len(self.prompt) :].split(self._PLACEHOLDER)
        return before, after.rstrip()

    def stop_token_ids(self) -> list[int]:
        end = self.family.end_of_turn
        return [self.tokenizer.convert_tokens_to_ids(end)] if end else []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, image_kwargs = batch_images(examples)
        prompts = self.processor(
            images=[[image] for image in images],
            text=[self.prompt] * len(images),
            padding="longest",
            padding_side="right",
            return_tensors="pt",
            **image_kwargs,
        )
        answers = [self._answer_ids(example["text"]) for example in examples]
        prompt_lengths = prompts["attention_mask"].sum(dim=1).tolist()
        total = max(length + len(answer) for length, answer in zip(prompt_lengths, answers, strict=True))
        batch = {key: value for key, value in prompts.items() if key not in ("input_ids", "attention_mask")}
        input_ids = torch.full((len(examples), total), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention_mask = torch.zeros_like(input_ids)
        for row, (length, answer) in enumerate(zip(prompt_lengths, answers, strict=True)):
            end = length + len(answer)
            input_ids[row, :length] = prompts["input_ids"][row, :length]
            input_ids[row, length:end] = labels[row, length:end] = torch.tensor(answer)
            attention_mask[row, :end] = 1
        return {**batch, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _answer_ids(self, caption: str) -> list[int]:
        # Cut before the end-of-turn tail goes on, so a long caption still ends with its stop token.
        ids = self.tokenizer(self.answer_prefix + caption.strip(), add_special_tokens=False)["input_ids"]
        return ids[: self.max_caption_tokens] + self.tail_ids


def make_collator(processor: Any, model_or_config: Any, prompt: str = "", max_caption_tokens: int = 64):
    """The collator the model's family trains with (its config is enough to choose)."""
    family = family_of(model_or_config)
    if family.uses_chat_template:
        return ChatCollator(processor, family, prompt, max_caption_tokens)
    config = getattr(model_or_config, "config", model_or_config)
    return Blip2Collator(processor, bool(config.get_text_config().is_encoder_decoder), prompt, max_caption_tokens)
