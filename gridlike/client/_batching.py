"""
Splitting a long list into the requests it is sent in: consecutive batches
bounded in count and in bytes, as the bulk routes of the HTTP API want.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def batches(
    items: Iterable[T], cost: Callable[[T], int], budget: int, most: int | None = None
) -> Iterator[list[T]]:
    """
    C{items} in order, in consecutive lists of at most C{most} items whose
    costs add up to at most C{budget}; an item over the budget goes alone.
    """
    batch: list[T] = []
    size = 0
    for item in items:
        spent = cost(item)
        if batch and (len(batch) == most or size + spent > budget):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += spent
    if batch:
        yield batch
