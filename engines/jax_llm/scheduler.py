"""The slot scheduler: admits waiting requests into free decode slots, steps them, finishes them.

JetStream's prefill -> insert -> generate, with static shapes: ``batch`` decode slots share the
KV cache; waiting requests are prefilled straight into free slots (their shared prefix loaded
from the prefix store, computed once if new), every active slot advances ``steps`` tokens per
decode call, and a slot whose request finished is refilled between calls. Stops (EOS, stop ids,
stop strings, max_tokens, the end of the KV cache) are checked on the host after each call.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
from collections.abc import Callable, Sequence

import numpy as np

from hyperbatch.engines.jax_llm.prefix_store import PrefixStore
from hyperbatch.engines.jax_llm.programs import DevicePrograms, PrefillRow, RowSampling
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.schemas.records import Counters, FinishReason, Request, Result, Usage


@dataclasses.dataclass(eq=False)
class Generation:
    """A request on its way through the engine."""

    index: int  # position in the caller's batch
    request: Request
    ids: list[int]
    prefix_len: int  # leading tokens served from the prefix store (0 = none)
    limit: int  # max new tokens (max_tokens bounded by the KV cache)
    key: np.ndarray  # [2] uint32 sampling key data
    stop_ids: frozenset[int]
    slot: int = -1
    cached: int = 0
    out: list[int] = dataclasses.field(default_factory=list)

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(self.ids[: self.prefix_len])

    def sampling(self) -> RowSampling:
        sp = self.request.sampling
        return RowSampling(sp.temperature, sp.top_k, sp.top_p, self.key, len(self.out))


def seed_key(seed: int | None) -> np.ndarray:
    """A request's sampling key data (a random one without a seed)."""
    if seed is None:
        seed = secrets.randbits(63)
    return np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], dtype=np.uint32)


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


# (start, end, load row, save row) of a part of a sequence's tokens
Part = tuple[int, int, int, int]
Finish = Callable[[int, Result], None]


class SlotScheduler:
    def __init__(
        self,
        programs: DevicePrograms,
        tokenizer: ChatTokenizer,
        store: PrefixStore,
        stats: Counters,
        *,
        buckets: Sequence[int],
        packed: bool,
        refill_min: int,
    ):
        self.programs, self.tokenizer, self.store, self.stats = programs, tokenizer, store, stats
        self.buckets, self.packed, self.refill_min = list(buckets), packed, refill_min
        sh = programs.shapes
        self.batch, self.steps, self.none = sh.batch, sh.steps, max(1, sh.store_rows)

    # -- the loop -----------------------------------------------------------------------------

    def run(self, pending: collections.deque[Generation], finish: Finish) -> None:
        """Serve every generation in ``pending`` to its end; ``finish(index, result)`` each."""
        active: dict[int, Generation] = {}
        while pending or active:
            free = [slot for slot in range(self.batch) if slot not in active]
            if pending and free and (not active or len(free) >= min(self.refill_min, len(pending))):
                for g in self.admit(pending, free):
                    done = self.check_finish(g)
                    if done:
                        finish(g.index, self.result(g, *done))
                    else:
                        active[g.slot] = g
                continue
            if not active:
                continue
            slots = {
                slot: (g.out[-1], len(g.ids) + len(g.out) - 1, g.sampling())
                for slot, g in active.items()
            }
            toks = self.programs.decode(slots)
            for slot, g in list(active.items()):
                for k in range(self.steps):
                    g.out.append(int(toks[k, slot]))
                    self.stats.useful_token_slots += 1
                    done = self.check_finish(g)
                    if done:
                        finish(g.index, self.result(g, *done))
                        del active[slot]
                        break

    # -- admission ----------------------------------------------------------------------------

    def admit(self, pending: collections.deque[Generation], free: list[int]) -> list[Generation]:
        """Prefill as many waiting requests as there are free slots; returns them."""
        chosen: list[Generation] = []
        pinned: dict[tuple[int, ...], int] = {}  # prefixes this round uses -> store row
        creators: list[Generation] = []
        while pending and len(chosen) < len(free):
            g = pending[0]
            if g.prefix_len:
                key = g.prefix
                if key not in pinned:
                    row = self.store.row_of(key)
                    if row is None:
                        row = self.store.claim(key, set(pinned.values()))
                        if row is None:
                            break  # store full of this round's prefixes: next round
                        creators.append(g)
                    pinned[key] = row
                self.store.touch(key)
                g.cached = 0 if any(c is g for c in creators) else g.prefix_len
            pending.popleft()
            g.slot = free[len(chosen)]
            chosen.append(g)
        # phase A: each new prefix, computed once into its creator's slot and saved to the store
        self._prefill([(g, (0, g.prefix_len, self.none, pinned[g.prefix])) for g in creators])
        # phase B: every request's own tokens after its (loaded) prefix
        parts = []
        for g in chosen:
            if g.prefix_len:
                parts.append((g, (g.prefix_len, len(g.ids), pinned[g.prefix], self.none)))
            else:
                parts.append((g, (0, len(g.ids), self.none, self.none)))
        for g, tok in self._prefill(parts):
            g.out.append(int(tok))
        return chosen

    def _row(self, g: Generation, part: Part) -> PrefillRow:
        a, e, load, save = part
        return PrefillRow(g.ids[a:e], g.slot, a, load, save, g.sampling())

    def _prefill(self, parts: list[tuple[Generation, Part]]) -> list[tuple[Generation, int]]:
        """Prefill calls for (generation, part): packed, or by bucket; (generation, next token)
        for every part."""
        if self.packed:
            return self._prefill_in_pieces(parts)
        by_bucket: dict[int, list[tuple[Generation, Part]]] = collections.defaultdict(list)
        for g, part in parts:
            by_bucket[bucket_of(part[1] - part[0], self.buckets)].append((g, part))
        out: list[tuple[Generation, int]] = []
        for t, items in sorted(by_bucket.items()):
            p_rows = self.programs.shapes.rows_per_bucket[t]
            for i in range(0, len(items), p_rows):
                chunk = items[i : i + p_rows]
                toks = self.programs.prefill(t, [self._row(g, part) for g, part in chunk])
                out.extend((g, int(toks[j])) for j, (g, _) in enumerate(chunk))
        return out

    def _prefill_in_pieces(
        self, parts: list[tuple[Generation, Part]]
    ) -> list[tuple[Generation, int]]:
        """Packed prefill of the parts, each split where a call is full (only its first piece
        loads the prefix, only its last saves and samples)."""
        sh = self.programs.shapes
        out: list[tuple[Generation, int]] = []
        call: list[tuple[Generation, Part]] = []
        ends: list[bool] = []  # does call[i] end its part?
        room = sh.prefill_tokens

        def run() -> None:
            toks = self.programs.prefill_packed([self._row(g, p) for g, p in call])
            out.extend((c[0], int(toks[i])) for i, c in enumerate(call) if ends[i])
            call.clear()
            ends.clear()

        for g, (a, e, load, save) in parts:
            while a < e:
                if room == 0 or len(call) == sh.pieces:
                    run()
                    room = sh.prefill_tokens
                n = min(e - a, room)
                ends.append(a + n == e)
                call.append((g, (a, a + n, load, save if ends[-1] else self.none)))
                a, room, load = a + n, room - n, self.none
        if call:
            run()
        return out

    # -- finishing ----------------------------------------------------------------------------

    def check_finish(self, g: Generation) -> tuple[FinishReason, str] | None:
        """After appending a token: is the request done? (reason, final text)."""
        sp = g.request.sampling
        last = g.out[-1]
        if last in g.stop_ids:
            return FinishReason.STOP, self.tokenizer.decode(g.out[:-1])
        if sp.stop:
            text = self.tokenizer.decode(g.out)
            cuts = [i for i in (text.find(x) for x in sp.stop) if i >= 0]
            if cuts:
                return FinishReason.STOP, text[: min(cuts)]
        if len(g.out) >= g.limit:
            return FinishReason.LENGTH, self.tokenizer.decode(g.out)
        return None

    @staticmethod
    def result(g: Generation, reason: FinishReason, text: str) -> Result:
        return Result(
            record_id=g.request.record_id,
            text=text,
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=len(g.ids), completion_tokens=len(g.out), cached_tokens=g.cached
            ),
            token_ids=tuple(g.out),
        )
