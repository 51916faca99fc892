"""Where training memory goes: measured while training (parts, breakdown, telemetry), predicted before it (the
per-layer activations and the estimator), compared at real width, and the advice after an out-of-memory error."""
