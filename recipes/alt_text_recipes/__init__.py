"""Fine-tuning recipes that teach vision-language models to write image alt text.

Four subpackages, imported one way (tests/test_architecture.py): `data` (the foundation), `train` (models and
the run), `memory` (measured and estimated) and `outputs` (alt text, scores, cards).
"""

from alt_text_recipes.data.logs import setup_logging

# First thing: bitsandbytes is imported by the modules below (through transformers and peft), and the filter on
# its logger must be there before it logs.
setup_logging()
