"""What a trained model produces and how it is judged: generation, evaluation and the caption metrics, caption
samples, the model card, alt-text files and their catalogue, and the experiment matrix."""
