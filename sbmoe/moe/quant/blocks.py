"""The unit every allocator works on: one linear block (a weight used as ``x @ W``) and what is known of it."""

from __future__ import annotations

from dataclasses import dataclass

BLOCK_KINDS = ("attention", "routed", "shared", "dense")


@dataclass
class LinearBlock:
    """One quantisable weight. ``frequency``: share of tokens that pass through it (1 for attention and
    dense layers; routing-trace counts for experts). Blocks with one ``tie`` key get one bit width."""

    name: str
    kind: str
    layer: int
    params: int
    expert: int | None = None
    frequency: float = 1.0
    tie: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; choose one of {', '.join(BLOCK_KINDS)}")


def average_bits(blocks: list[LinearBlock], bits: dict[str, int]) -> float:
    """Parameter-weighted mean bit width of an allocation (scales and zeros not counted)."""
    total = sum(b.params for b in blocks)
    return sum(b.params * bits[b.name] for b in blocks) / total


def tie_units(blocks: list[LinearBlock]) -> list[list[LinearBlock]]:
    """Blocks grouped by tie key (a block without one is its own unit), in first-seen order."""
    units: dict[str, list[LinearBlock]] = {}
    for block in blocks:
        units.setdefault(block.tie or f"\0{block.name}", []).append(block)
    return list(units.values())
