from alt_text_recipes.data.logs import setup_logging

# First thing: bitsandbytes is imported by the modules below (through transformers and peft), and the filter on
# its logger must be there before it logs.
setup_logging()
