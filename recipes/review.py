"""Review the alt text recipes/alt_text.py wrote, in a web page, and give what editors decided back to training.

    python recipes/review.py --alt_text_dir alt-text                      # the page, on http://127.0.0.1:8000/
    python recipes/review.py --alt_text_dir alt-text --export_captions reviewed.csv --export_preferences pairs.jsonl
    python recipes/lora.py --dataset_name reviewed.csv                    # train on the reviewed captions
    python recipes/review.py --alt_text_dir alt-text --publish_reviewed   # alt_text.csv/.jsonl with the reviewed text

The page shows each photo with its alt text in a field: accept it, edit it or reject it, from the keyboard or the
mouse; a filter shows the unreviewed, accepted, edited or rejected ones. Each decision is appended to
`<alt_text_dir>/reviews.jsonl` as it is taken, and `review_summary.json` (accept, edit and reject rates and the
mean edit distance per model) is rewritten beside it. docs/alt-text.md, "Reviewing alt text", says how to read it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from alt_text_recipes.data.errors import exit_on_user_error, require_setting
from alt_text_recipes.outputs.review_app import address, bound_socket, create_app, is_loopback, make_server, token_for
from alt_text_recipes.outputs.review_exports import (
    captions_csv,
    export,
    preference_pairs,
    publish_reviewed,
    write_summary,
)
from alt_text_recipes.outputs.review_store import ReviewStore
from alt_text_recipes.train.settings_parser import parse_tool_args


@dataclass
class ReviewArguments:
    alt_text_dir: str = field(
        metadata={"help": "The folder recipes/alt_text.py wrote (its --output_dir): alt_text.jsonl and parts/."}
    )
    host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "Address to serve the page on. Any but a loopback one (127.0.0.1, ::1, localhost) needs a "
            "token: --token, or one made and printed with the address."
        },
    )
    port: int = field(default=8000, metadata={"help": "Port to serve the page on (0: a free one, printed)."})
    token: str | None = field(
        default=None, metadata={"help": "A secret every request must carry (made for you on a non-loopback --host)."}
    )
    title: str = field(default="Alt text review", metadata={"help": "Heading and title of the page."})
    export_captions: str | None = field(
        default=None,
        metadata={
            "help": "Write the reviewed captions to this CSV (image, text), which --dataset_name reads: accepted "
            "photos with the model's text, edited ones with the edit; rejected and unreviewed ones left out. "
            "Exports, and --publish_reviewed, run instead of the page."
        },
    )
    export_preferences: str | None = field(
        default=None,
        metadata={
            "help": "Write each edited photo as a preference pair in TRL's format (images, prompt, chosen = the "
            "edit, rejected = the model's text), as JSON lines, to this file."
        },
    )
    publish_reviewed: bool = field(
        default=False,
        metadata={
            "help": "Rewrite alt_text.jsonl and alt_text.csv with the reviewed text (edits in place of the "
            "model's text; rejected photos left out)."
        },
    )

    def __post_init__(self) -> None:
        require_setting(0 <= self.port <= 65535, "port", self.port, "give 0 (a free port) up to 65535")
        require_setting(self.token != "", "token", "''", "give a secret, or leave it out")


def run_exports(args: ReviewArguments, store: ReviewStore) -> None:
    if args.export_captions:
        text, count = captions_csv(store, Path(args.export_captions).parent)
        print(f"{count} reviewed captions -> {export(text, args.export_captions)}")
    if args.export_preferences:
        text, count = preference_pairs(store)
        print(f"{count} preference pairs (edited photos) -> {export(text, args.export_preferences)}")
    if args.publish_reviewed:
        counts = publish_reviewed(store)
        print(
            f"published the reviewed alt text in {store.folder}/alt_text.jsonl and alt_text.csv: "
            + ", ".join(f"{count} {status}" for status, count in counts.items())
            + (" (rejected photos are left out: write their alt text by hand)" if counts["rejected"] else "")
        )


def serve(args: ReviewArguments, store: ReviewStore) -> None:
    token = token_for(args.host, args.token)
    sock = bound_socket(args.host, args.port)
    app = create_app(store, token, args.title, local=is_loopback(args.host))
    print(f"reviewing {len(store.photos)} photos of {store.folder}: open {address(sock, token)}  (Ctrl+C stops)")
    if not is_loopback(args.host):
        print("from another machine, put this machine's name or address in it; every request needs the token")
    make_server(app).run(sockets=[sock])


def review(args: ReviewArguments) -> None:
    store = ReviewStore(args.alt_text_dir)
    try:
        if args.export_captions or args.export_preferences or args.publish_reviewed:
            run_exports(args, store)
            summary = write_summary(store)
            print(
                f"{summary['reviewed']} of {summary['photos']} photos reviewed -> {store.folder}/review_summary.json"
            )
        else:
            serve(args, store)
    finally:
        store.close()


def main() -> None:
    exit_on_user_error(lambda: review(parse_tool_args(ReviewArguments)))


if __name__ == "__main__":
    main()
