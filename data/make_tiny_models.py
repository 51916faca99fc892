"""Build the tiny models that the tests and the offline demo fine-tune: two BLIP-2s, an Idefics2, a LLaVA.

    python data/make_tiny_models.py                 # rewrites data/models/tiny-{blip2-opt,blip2-t5,idefics2,llava}
    python data/make_tiny_models.py --only llava    # one of them
    python data/make_tiny_models.py --steps 300     # quicker, less pre-trained

Each is an ordinary `save_pretrained` folder (model + processor, safetensors) with the real
architecture at toy size: BLIP-2 = ViT + Q-Former + OPT decoder or T5 encoder-decoder; Idefics2 =
SigLIP-style vision tower + perceiver-resampler connector + Mistral decoder, with Idefics2's chat
template; LLaVA-1.5 = CLIP vision tower + MLP projector + Llama decoder, with LLaVA-1.5's chat
template. The tokenizers are trained here on the captions of both tasks, so nothing comes from the Hub.
Each model is then pre-trained on a generic synthetic captioning task (coloured shapes
on a plain background, never food), so fine-tuning on the food photos is a real adaptation and LoRA
has a working model to adapt. Every weight matrix has at least 4096 elements, so 8-bit optimizers
really quantize their state.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    GPT2Tokenizer,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    OPTConfig,
    T5Config,
    T5Tokenizer,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

from alt_text_recipes.outputs.generation import generate_alt_text
from alt_text_recipes.train.collators import make_collator
from alt_text_recipes.train.families import TWINS

from make_gourmetgram_mini import random_scene

IMAGE_SIZE = 64
NUM_QUERY_TOKENS = 8
HIDDEN = 128
# Every tiny transformer stack: two layers of width HIDDEN, four heads, an MLP twice as wide.
TINY_STACK = dict(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4)
# Every tiny ViT: 8×8 patches of the IMAGE_SIZE² input; a sane init (the vision configs default to 1e-10).
TINY_VISION = dict(TINY_STACK, image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02)

# The chat templates of HuggingFaceM4/idefics2-8b and llava-hf/llava-1.5-7b-hf.
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}"
    "{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Which twins there are and where they live: each family declares its own (recipes/alt_text_recipes/train/families/).
MODELS = tuple(twin.builds for twin in TWINS.values())
FOLDERS = {twin.builds: Path(twin.folder).name for twin in TWINS.values()}

SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 70, 210),
    "green": (40, 170, 60),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 140, 30),
    "purple": (140, 50, 170),
}
SHAPE_BACKGROUNDS = {"gray": (128, 128, 128), "pink": (240, 180, 200), "teal": (40, 140, 140), "brown": (120, 80, 50)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("no", "one", "two", "three", "four")


def shape_example(rng: random.Random) -> dict:
    """A generic pre-training example: one or two groups of coloured shapes on a plain background."""
    background = rng.choice(sorted(SHAPE_BACKGROUNDS))
    image = Image.new("RGB", (128, 128), SHAPE_BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    groups, phrases = [], []
    for _ in range(rng.randint(1, 2)):
        colour, shape = rng.choice(sorted(SHAPE_COLOURS)), rng.choice(SHAPES)
        if (colour, shape) not in groups and SHAPE_COLOURS[colour] != SHAPE_BACKGROUNDS[background]:
            groups.append((colour, shape))
    for colour, shape in groups:
        count = rng.randint(1, 3)
        for _ in range(count):
            x, y, s = rng.randint(14, 114), rng.randint(14, 114), rng.randint(8, 13)
            box = [x - s, y - s, x + s, y + s]
            fill = SHAPE_COLOURS[colour]
            if shape == "circle":
                draw.ellipse(box, fill=fill)
            elif shape == "square":
                draw.rectangle(box, fill=fill)
            else:
                draw.polygon([(x, y - s), (x - s, y + s), (x + s, y + s)], fill=fill)
        phrases.append(f"{NUMBERS[count]} {colour} {shape}{'s' if count > 1 else ''}")
    return {"image": image, "text": f"{' and '.join(phrases)} on a {background} background"}


def caption_corpus(rng: random.Random, size: int = 4000) -> list[str]:
    """Captions of both tasks, so the tokenizer knows the food words without the model having seen them."""
    shapes = [shape_example(rng)["text"] for _ in range(size)]
    food = [random_scene(rng).caption() for _ in range(size)]
    return shapes + food


def make_opt_tokenizer(corpus: list[str], vocab_size: int, bos_token: str = "</s>") -> GPT2Tokenizer:
    """Byte-level BPE with OPT's special tokens: <s>=0, <pad>=1, </s>=2 (EOS; OPT's BOS too), <unk>=3.
    The Llama-style decoders of the chat twins take bos_token="<s>"."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    trained = json.loads(bpe.to_str())["model"]
    vocab, merges = trained["vocab"], [tuple(pair) for pair in trained["merges"]]
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=bos_token,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )


def make_t5_tokenizer(corpus: list[str]) -> T5Tokenizer:
    """A unigram (sentencepiece-style) vocabulary with T5's special tokens: <pad>=0, </s>=1, <unk>=2.

    Pieces are the corpus's whole words (scored by log frequency) plus single characters, so any
    text still tokenizes; T5Tokenizer appends EOS as the real one does.
    """
    words = Counter(f"\u2581{word}" for text in corpus for word in text.split())
    characters = sorted({character for text in corpus for character in text if character != " "})
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(word, math.log(count / total)) for word, count in words.most_common()]
    vocab += [(character, -20.0) for character in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def make_processor(tokenizer) -> Blip2Processor:
    image_processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)


def make_config(tokenizer, language_model: str) -> Blip2Config:
    vocab_size = len(tokenizer)
    vision = Blip2VisionConfig(**TINY_VISION)
    qformer = Blip2QFormerConfig(
        **TINY_STACK,
        encoder_hidden_size=HIDDEN,
        cross_attention_frequency=1,
        vocab_size=vocab_size,
        layer_norm_eps=1e-6,
    )
    if language_model == "opt":
        text = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=HIDDEN,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            dropout=0.0,
            attention_dropout=0.0,
        )
    else:
        text = T5Config(
            vocab_size=vocab_size,
            d_model=HIDDEN,
            d_kv=32,
            d_ff=2 * HIDDEN,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.pad_token_id,
            dropout_rate=0.0,
            tie_word_embeddings=False,
        )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )


def _decoder_config(tokenizer) -> dict:
    """A Llama/Mistral-style decoder at toy size (grouped-query attention, gated MLP)."""
    return dict(
        vocab_size=len(tokenizer),
        **TINY_STACK,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def make_idefics2(tokenizer) -> tuple[Idefics2Processor, Idefics2Config]:
    # One 64x64 image per example (no splitting into crops): 64 patches, resampled to 8 latents.
    image_processor = Idefics2ImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}, do_image_splitting=False
    )
    processor = Idefics2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=NUM_QUERY_TOKENS,
        chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    vision = dict(TINY_VISION)
    perceiver = dict(
        hidden_size=HIDDEN,
        hidden_act="silu",
        resampler_n_latents=NUM_QUERY_TOKENS,
        resampler_depth=2,
        resampler_n_heads=4,
        resampler_head_dim=32,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
    )
    text = {**_decoder_config(processor.tokenizer), "model_type": "mistral", "sliding_window": None}
    config = Idefics2Config(
        vision_config=vision,
        perceiver_config=perceiver,
        text_config=text,
        image_token_id=processor.tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    return processor, config


def make_llava(tokenizer) -> tuple[LlavaProcessor, LlavaConfig]:
    # As LLaVA-1.5: shortest edge resized, centre crop, CLS dropped ("default"), the next-to-last layer's features.
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    # CLIP's own initialiser (no initializer_range override), three layers: the features come from the second.
    vision = dict(
        TINY_STACK,
        model_type="clip_vision_model",
        num_hidden_layers=3,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=HIDDEN,
    )
    text = {**_decoder_config(processor.tokenizer), "model_type": "llama"}
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_token_id=processor.tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    return processor, config


def build_model(config, seed: int):
    torch.manual_seed(seed)
    if isinstance(config, Blip2Config):
        model = Blip2ForConditionalGeneration(config)
        # Zero query tokens + the Q-Former's LayerNorm give exploding gradients at the start.
        torch.nn.init.normal_(model.query_tokens, std=0.02)
        return model
    if isinstance(config, Idefics2Config):
        return Idefics2ForConditionalGeneration(config)
    return LlavaForConditionalGeneration(config)


def pretrain(model, processor, steps: int, batch_size: int, seed: int) -> None:
    """Teach the model generic captioning on coloured shapes (not food)."""
    rng = random.Random(seed)
    collator = make_collator(processor, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    for step in range(1, steps + 1):
        batch = collator([shape_example(rng) for _ in range(batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == 1:
            print(f"  step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()


def make_processor_and_config(name: str, corpus: list[str]):
    if name == "opt":
        processor = make_processor(make_opt_tokenizer(corpus, 600))
    elif name == "t5":
        processor = make_processor(make_t5_tokenizer(corpus))
    elif name == "idefics2":
        return make_idefics2(make_opt_tokenizer(corpus, 600, bos_token="<s>"))
    else:
        return make_llava(make_opt_tokenizer(corpus, 600, bos_token="<s>"))
    return processor, make_config(processor.tokenizer, name)


def make_tiny_model(name: str, out_dir: Path, corpus: list[str], steps: int, seed: int) -> None:
    processor, config = make_processor_and_config(name, corpus)
    model = build_model(config, seed)
    print(
        f"{out_dir.name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"vocabulary {len(processor.tokenizer)}"
    )
    pretrain(model, processor, steps, batch_size=32, seed=seed)
    example = shape_example(random.Random(seed + 1))
    generated = generate_alt_text(model, processor, [example["image"]], max_new_tokens=20)[0]
    print(f"  reference: {example['text']}\n  generated: {generated}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "models")
    parser.add_argument("--steps", type=int, default=1500, help="pre-training steps (batch 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=MODELS, help="build only this model")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpus = caption_corpus(random.Random(args.seed))
    for name in MODELS:
        if args.only in (None, name):
            make_tiny_model(name, args.out / FOLDERS[name], corpus, args.steps, args.seed)


if __name__ == "__main__":
    main()
