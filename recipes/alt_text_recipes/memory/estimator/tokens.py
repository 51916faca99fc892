"""How many tokens an example runs over: the prompt's before the caption, the longest caption's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from trl import ModelConfig

from alt_text_recipes.data.errors import RecipeError
from alt_text_recipes.data.paths import is_local, shipped_config
from alt_text_recipes.data.sources import select_split
from alt_text_recipes.train.arguments import ScriptArguments
from alt_text_recipes.train.families import DEFAULT_INSTRUCTION, ModelFamily
from alt_text_recipes.train.modeling import load_processor

CHAT_TEMPLATE_TOKENS = 16  # turn markers, end of utterance, the tokens around the image


def prompt_token_count(family: ModelFamily, script_args) -> int:
    """Tokens before the caption besides the image's: BLIP-2's BOS; a chat turn with the instruction."""
    if not family.uses_chat_template:
        return 1
    instruction = getattr(script_args, "prompt", "") or DEFAULT_INSTRUCTION
    return math.ceil(1.3 * len(instruction.split())) + CHAT_TEMPLATE_TOKENS


def caption_token_count(
    script_args: ScriptArguments, model_args: ModelConfig, seed: int, tokenizer: Any = None
) -> int:
    """Tokens of the longest training caption plus EOS, as the collator will build them (with `tokenizer`,
    or the model's own when it can be loaded); `seed` is the run's, which chooses the held-out images."""
    if script_args.streaming:
        # A stream is not read ahead (it may be larger than the disk): its captions are at most the
        # collator's cap, the bound the estimate then assumes.
        return script_args.max_caption_tokens + 1
    splits = script_args.load_splits(seed)
    captions = list(select_split(splits, script_args.train_split, script_args.max_train_samples)["text"])
    # A Hub id with a config shipped in data/model_configs (an estimate before anything is downloaded): its
    # tokenizer only from a copy already in the Hub cache, found on disk without the Hub client (which makes
    # requests, and retries them offline, even to look in its cache); none there: the words x 1.3 count below.
    name = model_args.model_name_or_path
    if not is_local(name) and shipped_config(name) is not None:
        cached = try_to_load_from_cache(name, "tokenizer_config.json")
        name = str(Path(cached).parent) if isinstance(cached, str) else None
    if tokenizer is None and name is not None:
        try:
            tokenizer = load_processor(name).tokenizer
        except RecipeError:  # not reachable offline
            tokenizer = None
    if tokenizer is None:  # BPE vocabularies spend about 1.3 tokens a word
        longest = math.ceil(1.3 * max(len(caption.split()) for caption in captions))
    else:
        longest = max(len(ids) for ids in tokenizer(captions, add_special_tokens=False)["input_ids"])
    return min(longest, script_args.max_caption_tokens) + 1
