"""Growing columns in blocks of anonymous memory, handed back to the system once a column is built.

The loader appends a few thousand values per column for each decoded chunk. Kept as one small
array per chunk on the malloc heap, those pieces were interleaved with everything else the
loop allocates; once freed they left the heap full of holes that stay resident (490 MB free but
resident after loading a 2 GB trace, reused by little of the analysis). Here each column fills
blocks mapped for it alone (doubling in size up to `_MAX_BLOCK_BYTES`, so a small trace maps
little), and building the column unmaps them: the memory goes back at once.

Texts (names, categories, threads) and raw shapes are held as int32 codes into a table of
distinct values (`CodeTable`), 4 bytes a row instead of an 8-byte pointer.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

_FIRST_BLOCK_BYTES = 1 << 16
_MAX_BLOCK_BYTES = 1 << 25  # virtual size; only the pages written become resident


class BlockColumn:
    """A column of one numpy dtype, appended to piece by piece."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self._blocks: list[np.ndarray] = []
        self._used = 0  # values in the last block
        self._full = 0  # values in all blocks but the last

    def __len__(self) -> int:
        return self._full + self._used

    def append(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.dtype)
        done = 0
        while done < len(values):
            if not self._blocks or self._used == len(self._blocks[-1]):
                self._new_block()
            block = self._blocks[-1]
            take = min(len(block) - self._used, len(values) - done)
            block[self._used:self._used + take] = values[done:done + take]
            self._used += take
            done += take

    def _new_block(self) -> None:
        if self._blocks:
            self._full += self._used
        last = self._blocks[-1].nbytes if self._blocks else _FIRST_BLOCK_BYTES // 2
        size = min(2 * last, _MAX_BLOCK_BYTES)
        self._blocks.append(np.frombuffer(mmap.mmap(-1, size), dtype=self.dtype))
        self._used = 0

    def parts(self) -> list[np.ndarray]:
        """The values, block by block (views: valid until `build` or `clear`)."""
        return [b for b in self._blocks[:-1]] + ([self._blocks[-1][:self._used]] if self._blocks else [])

    def build(self) -> np.ndarray:
        """All values as one ordinary array; the blocks are released (the column is empty after)."""
        parts = self.parts()
        out = np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
        self._blocks, self._used, self._full = [], 0, 0
        return out


class CodeTable:
    """Distinct values and their int32 codes; `code_of` maps a raw key to its code."""

    def __init__(self) -> None:
        self.code_of: dict[Any, int] = {}
        self.values: list[Any] = []

    def add(self, key: Any, value: Any) -> int:
        code = len(self.values)
        self.code_of[key] = code
        self.values.append(value)
        return code
