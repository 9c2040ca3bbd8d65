"""Which shared prefix lives in which row of the device's prefix store (host-side index, LRU).

A chat prompt's prefix (system prompt, history, role header) is prefilled once into a store row
and copied into every slot that needs it. This index maps a prefix's token ids to its row; a new
prefix takes a free row, else the least recently used one that the current admission round does
not need (``pinned``).
"""

from __future__ import annotations

import collections

Prefix = tuple[int, ...]  # a prefix's token ids


class PrefixStore:
    def __init__(self, rows: int):
        self.rows = rows
        self._index: collections.OrderedDict[Prefix, int] = collections.OrderedDict()

    def row_of(self, prefix: Prefix) -> int | None:
        return self._index.get(prefix)

    def touch(self, prefix: Prefix) -> None:
        """Mark as most recently used."""
        self._index.move_to_end(prefix)

    def claim(self, prefix: Prefix, pinned: set[int]) -> int | None:
        """A row for a new prefix (a free one, else evict the least recently used unpinned
        one); None when every row is pinned by this round."""
        used = set(self._index.values())
        row = next((r for r in range(self.rows) if r not in used), None)
        if row is None:
            for old, r in self._index.items():  # least recently used first
                if r not in pinned:
                    del self._index[old]
                    row = r
                    break
        if row is not None:
            self._index[prefix] = row
        return row

    def clear(self) -> None:
        """Forget every prefix (the store's contents are gone, or a benchmark wants a cold run)."""
        self._index.clear()
