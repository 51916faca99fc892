"""The BLIP-2 inputs are right: the image reaches the model, and only the caption is learnt."""

from __future__ import annotations

import pytest
import torch

from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.train.collators import IGNORE_INDEX, Blip2Collator
from alt_text_recipes.train.modeling import is_encoder_decoder

from conftest import ALL_TWINS


def _examples(split, indices):
    return [{"image": split[i]["image"], "text": split[i]["text"]} for i in indices]


def test_decoder_only_labels_cover_caption_and_eos_only(food_splits):
    from alt_text_recipes.train.modeling import load_processor

    from conftest import TINY_MODELS

    processor = load_processor(str(TINY_MODELS["opt"]))
    tokenizer = processor.tokenizer
    collator = Blip2Collator(processor, is_encoder_decoder=False, prompt="alt text:")
    examples = _examples(food_splits["train"], range(6))
    batch = collator(examples)
    image_token_id = collator.image_token_id
    num_query = processor.num_query_tokens

    for row, example in enumerate(examples):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        # The processor put exactly num_query_tokens image tokens first.
        assert (ids == image_token_id).sum() == num_query
        assert (ids[:num_query] == image_token_id).all()
        # No label on an image token, on padding, on BOS or on the prompt.
        assert (labels[ids == image_token_id] == IGNORE_INDEX).all()
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        assert (labels[: collator.prefix_length] == IGNORE_INDEX).all()
        # The learnt tokens are exactly the caption followed by EOS.
        learnt = labels[labels != IGNORE_INDEX].tolist()
        assert learnt[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learnt[:-1]).strip() == example["text"]
    # Padding exists in this batch (captions differ in length), so the pad check was not vacuous.
    assert (batch["attention_mask"] == 0).any()


def test_encoder_decoder_caption_is_only_the_decoder_target(food_splits):
    from alt_text_recipes.train.modeling import load_processor

    from conftest import TINY_MODELS

    processor = load_processor(str(TINY_MODELS["t5"]))
    tokenizer = processor.tokenizer
    collator = Blip2Collator(processor, is_encoder_decoder=True)
    examples = _examples(food_splits["train"], range(6))
    batch = collator(examples)

    for row, example in enumerate(examples):
        encoder_ids = batch["input_ids"][row].tolist()
        caption_ids = set(tokenizer(example["text"], add_special_tokens=False)["input_ids"])
        # The encoder sees the image tokens (and EOS), never a caption token.
        assert encoder_ids.count(collator.image_token_id) == processor.num_query_tokens
        assert not caption_ids & set(encoder_ids)
        labels = batch["labels"][row]
        learnt = labels[labels != IGNORE_INDEX].tolist()
        assert learnt[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learnt[:-1]).strip() == example["text"]


def test_loss_and_generated_text_change_when_only_the_image_changes(tiny_model, food_splits):
    family, model, processor = tiny_model
    collator = Blip2Collator(processor, is_encoder_decoder(model))
    split = food_splits["train"]
    examples = _examples(split, range(4))
    # Same captions, other photos (rolled by one), everything else identical.
    swapped = [{"image": examples[(i + 1) % 4]["image"], "text": examples[i]["text"]} for i in range(4)]
    batch, swapped_batch = collator(examples), collator(swapped)
    assert torch.equal(batch["input_ids"], swapped_batch["input_ids"])
    assert torch.equal(batch["labels"], swapped_batch["labels"])
    with torch.no_grad():
        loss = model(**batch).loss.item()
        swapped_loss = model(**swapped_batch).loss.item()
    assert abs(loss - swapped_loss) > 1e-3, f"{family}: the loss ignores the image"

    # The pre-trained tiny models describe shapes: different shape pictures get different text.
    import random

    from make_tiny_models import shape_example

    rng = random.Random(123)
    pictures = [shape_example(rng)["image"] for _ in range(6)]
    texts = generate_alt_text(model, processor, pictures, max_new_tokens=20)
    assert len(set(texts)) > 1, f"{family}: the same text for every image: {texts}"


@pytest.mark.parametrize("twin", sorted(ALL_TWINS))
def test_a_long_caption_is_cut_and_still_ends_with_the_stop_token(twin, food_splits):
    from alt_text_recipes.train.collators import make_collator
    from alt_text_recipes.train.families import family_of
    from alt_text_recipes.train.modeling import load_config, load_processor

    processor, config = load_processor(str(ALL_TWINS[twin])), load_config(str(ALL_TWINS[twin]))
    tokenizer = processor.tokenizer
    end_of_turn = family_of(config).end_of_turn
    stop = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else tokenizer.eos_token_id
    max_caption_tokens = 24
    short, other = _examples(food_splits["train"], range(2))
    long_caption = " ".join([other["text"]] * 10)
    assert len(tokenizer(short["text"], add_special_tokens=False)["input_ids"]) < max_caption_tokens
    assert len(tokenizer(long_caption, add_special_tokens=False)["input_ids"]) > 4 * max_caption_tokens
    collator = make_collator(processor, config, max_caption_tokens=max_caption_tokens)
    batch = collator([short, {**other, "text": long_caption}])

    def learnt(labels):
        return labels[labels != IGNORE_INDEX].tolist()

    long_learnt = learnt(batch["labels"][1])
    assert long_learnt[-1] == stop
    assert len(long_learnt) == max_caption_tokens + 1
    assert long_caption.startswith(tokenizer.decode(long_learnt[:-1]).strip())
    # A short caption is learnt whole, as alone in a batch with no limit in sight.
    short_learnt = learnt(batch["labels"][0])
    assert short_learnt[-1] == stop and tokenizer.decode(short_learnt[:-1]).strip() == short["text"]
    alone = make_collator(processor, config, max_caption_tokens=10_000)([short])
    width = int(alone["attention_mask"][0].sum())
    assert torch.equal(batch["input_ids"][0, :width], alone["input_ids"][0, :width])
    assert short_learnt == learnt(alone["labels"][0])
