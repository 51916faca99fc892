"""The parts training memory is told in, shared by what measures it (measured.py), what predicts it (estimator/)
and what reports both (outputs/experiment_matrix.py: the results table and chart, benchmarks/gpu_check.py).

Held in bytes; converted to GB only at the edges (logs, JSON, tables), under the keys those have always used:
`<part>_gb` in the estimator's JSON and results.json, `memory/<part>_gb` in the Trainer's log.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

GB = 1024**3


@dataclass(frozen=True)
class MemoryParts:
    """Bytes per part: parameters, gradients, optimizer state, saved activations, and the rest."""

    params: float = 0
    grads: float = 0
    optimizer: float = 0
    activations: float = 0
    other: float = 0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parts in the order every report lists them."""
        return tuple(part.name for part in fields(cls))

    @property
    def total(self) -> float:
        return sum(astuple(self))

    def gb(self, suffix: str = "_gb") -> dict[str, float]:
        """{"params_gb": ..., ..., "total_gb": ...}: each part and the total in GB, keyed as reports key them."""
        values = {name: getattr(self, name) for name in self.names()}
        return {f"{name}{suffix}": value / GB for name, value in {**values, "total": self.total}.items()}
