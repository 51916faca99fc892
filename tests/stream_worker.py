"""One rank of the streaming check (launched by tests/test_streaming.py through torchrun).

The rank streams WebDataset shards through the project's loader, takes its part (`rank_share`), checks
it as it is read (`StreamCheck`), and reads it through the training DataLoader exactly as the Trainer
builds it (`AltTextTrainer.get_train_dataloader`, two DataLoader workers). It writes the captions it saw
and its check report to OUT.rank<N>.json.

    torchrun --nproc_per_node 2 tests/stream_worker.py SHARDS_FOLDER OUT
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import TrainingArguments

from alt_text_recipes.data.streaming import StreamCheck, checked_stream, load_caption_stream, rank_share
from alt_text_recipes.outputs.evaluation import GenerationSettings
from alt_text_recipes.train.trainer import AltTextTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]


def captions_only(examples: list[dict]) -> dict:
    return {"text": [example["text"] for example in examples]}


def main(shards: str, out: str) -> None:
    # As in a recipe: the TrainingArguments set up the process group (gloo, from torchrun's environment)
    # and say which process this is.
    args = TrainingArguments(
        output_dir=str(Path(out).parent / "trainer"),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        dataloader_num_workers=2,
        remove_unused_columns=False,
        max_steps=1,
    )
    check = StreamCheck("train", "skip")
    share = checked_stream(
        rank_share(load_caption_stream(shards)["train"], args.process_index, args.world_size, seed=0), check
    )
    trainer = AltTextTrainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=share,
        data_collator=captions_only,
        generation=GenerationSettings(),
        embedding_model=None,
        caption_metrics=False,
        run_summary=None,
    )
    captions = [caption for batch in trainer.get_train_dataloader() for caption in batch["text"]]
    report = check.report()
    check.close()
    Path(f"{out}.rank{args.process_index}.json").write_text(
        json.dumps({"world_size": args.world_size, "captions": captions, "report": asdict(report)})
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
