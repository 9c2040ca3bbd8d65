"""The slot scheduler: admits waiting requests into free decode slots, steps them, finishes them.

JetStream's prefill -> insert -> generate, with static shapes: ``batch`` decode slots share the
KV cache; waiting requests are prefilled straight into free slots (their shared prefix loaded
from the prefix store, computed once if new), every active slot advances ``steps`` tokens per
decode call, and a slot whose request finished is refilled between calls. Stops (EOS, stop ids,
stop strings, max_tokens, the end of the KV cache) are checked on the host after each call.

``run`` is a loop over a source of work: between device calls it takes whatever has arrived
(from any number of callers), so slots are refilled from whoever has work and only the source's
last requests decode with idle slots. It blocks on the source only when it has nothing to do.

Step-wise requests -- a constrained output (structured outputs: an llguidance matcher per
sequence) or log-probabilities -- need the host between tokens. Their last prompt token is held
back from prefill, so their first token, like every later one, comes out of the guided decode
program: one step per call, each slot's allowed tokens as a packed bitmask row (every token for
the others), the sampled token's log-probability and the top 20. The masks of a step are built
(llguidance, all rows in parallel) while the device runs the step's model: the sampling is a
second program, dispatched once they are written. While any step-wise request is
active the batch advances with that program (one token per call for every slot); otherwise with
the ``steps``-token decode program, untouched. A request with ``n > 1`` is ``n`` sequences (one
slot each, choice ``i`` with its own sampling stream, the prompt prefilled once into the prefix
store when it fits and loaded by the others); its result is written when all are done.

Accounting: every iteration (an admission round or a decode call, with the host work around
it) is timed; its wall time and its computed token slots are divided among the requests that
took part, in proportion to their useful slots in it (tokens prefilled or generated), and added
to the engine's totals. A request's ``Result.charge`` is the sum of its shares, so the charges of
all requests add up to the totals, idle slots and padding included.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import numpy as np

from hyperbatch.engines.jax_llm.prefix_store import PrefixStore
from hyperbatch.engines.jax_llm.programs import DevicePrograms, PrefillRow, RowSampling
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.schemas.records import (
    Charge,
    Choice,
    Counters,
    ErrorCode,
    FinishReason,
    Request,
    RequestError,
    Result,
    TokenLogprob,
    Usage,
)

Key = Hashable  # the caller's handle for a request; results come back under it


@dataclasses.dataclass(eq=False)
class Group:
    """The ``n`` sequences (choices) of one request: its result is written once all are done."""

    key: Key
    request: Request
    n: int
    done: dict[int, tuple[Generation, Result]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class Generation:
    """One sequence on its way through the engine: a request, or one choice of it (n > 1)."""

    key: Key
    request: Request
    ids: list[int]
    prefix_len: int  # leading tokens served from the prefix store (0 = none)
    limit: int  # max new tokens (max_tokens bounded by the KV cache)
    key_data: np.ndarray  # [2] uint32 sampling key data
    stop_ids: frozenset[int]
    matcher: Any = None  # the output constraint's llguidance matcher (None: unconstrained)
    group: Group | None = None  # the request's choices, when it asked for n > 1
    index: int = 0  # its choice index
    slot: int = -1
    carried: bool = False  # its prompt was once left part-prefilled for the next round
    cached: int = 0
    out: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per token when the request wants them
    charge: Charge = dataclasses.field(default_factory=Charge)
    useful: int = 0  # slots of the current iteration (scratch)

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(self.ids[: self.prefix_len])

    @property
    def stepwise(self) -> bool:
        """Does each token need the host first (a constraint) or after (log-probabilities)?"""
        return self.matcher is not None or self.request.sampling.logprobs is not None

    @property
    def prefill_end(self) -> int:
        """Tokens prefilled: all, or all but the last for a step-wise sequence (its first
        token comes out of the guided decode program)."""
        return len(self.ids) - 1 if self.stepwise else len(self.ids)

    @property
    def last(self) -> tuple[int, int]:
        """The token the next decode step feeds, and its position."""
        n = len(self.ids) + len(self.out)
        return (self.out[-1] if self.out else self.ids[-1]), n - 1

    def sampling(self) -> RowSampling:
        sp = self.request.sampling
        return RowSampling(sp.temperature, sp.top_k, sp.top_p, self.key_data, len(self.out))


class WorkSource(Protocol):
    def take(self, max_n: int, wait: bool) -> list[tuple[Key, Request]] | None: ...


class MaskFiller(Protocol):
    """Writes matchers' allowed next tokens into rows of a packed bitmask (``grammar.Grammars``)."""

    def fill(self, rows: Sequence[tuple[Any, int]], bitmask: np.ndarray) -> None: ...


Prepare = Callable[[Key, Request], list[Generation]]
Finish = Callable[[Key, Result], None]


def seed_key(seed: int | None, choice: int = 0) -> np.ndarray:
    """The sampling key data of a request's choice ``choice`` (a random one without a seed):
    choice 0 draws from the seed itself, choice i > 0 from a seed derived from (seed, i), so
    every choice of a seeded request is reproducible and no two share a stream."""
    if seed is None:
        seed = secrets.randbits(63)
    elif choice:
        digest = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
        seed = int.from_bytes(digest, "little") >> 1
    return np.array([(seed >> 32) & 0xFFFFFFFF, seed & 0xFFFFFFFF], dtype=np.uint32)


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


# (start, end, load row, save row) of a part of a sequence's tokens
Part = tuple[int, int, int, int]

#: decode calls a prompt carried over from a part-full prefill call waits, at most, for the next
#: admission round (after that the round runs, padding or not)
CARRY_CALLS = 2


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
        self.masks: MaskFiller | None = None  # set by the engine with its first constraint

    # -- the loop -----------------------------------------------------------------------------

    def run(self, source: WorkSource, prepare: Prepare, finish: Finish) -> None:
        """Serve what ``source`` hands over until it is closed and all of it is done."""
        active: dict[int, Generation] = {}
        pending: collections.deque[Generation] = collections.deque()
        carried: list[tuple[Generation, Part]] = []  # prompts part-prefilled, holding slots
        waited = 0  # decode calls since the last admission round
        closed = False
        while True:
            if not closed:
                idle = not active and not pending
                room = 2 * self.batch - len(pending)  # a lookahead for admission rounds
                if idle or room > 0:
                    taken = source.take(max(1, room), wait=idle)
                    if taken is None:
                        closed = True
                    for key, request in taken or ():
                        try:
                            pending.extend(prepare(key, request))
                        except RequestError as e:
                            finish(key, Result.failed(request.record_id, e.code, e.message))
            if not active and not pending and not carried:
                if closed:
                    return
                continue
            held = {g.slot for g, _ in carried}
            free = [slot for slot in range(self.batch) if slot not in active and slot not in held]
            waiting = len(pending)
            due = bool(carried) and (waited >= CARRY_CALLS or not active or not waiting)
            if ((waiting and free) or carried) and (
                not active or len(free) >= min(self.refill_min, waiting) or due
            ):
                self._admission_round(pending, free, carried, active, finish)
                waited = 0
            elif active:
                self._decode_round(active, finish)
                waited += 1

    def _admission_round(
        self,
        pending: collections.deque[Generation],
        free: list[int],
        carried: list[tuple[Generation, Part]],
        active: dict[int, Generation],
        finish: Finish,
    ) -> None:
        t0 = time.perf_counter()
        members, computed = self.admit(pending, free, carried, overlap=bool(active))
        for g, _ in carried:
            g.carried = True
        held = {id(g) for g, _ in carried}
        done = []
        for g in members:
            if id(g) in held:
                continue  # its prompt goes on in the next round
            reason = self.check_finish(g) if g.out else None  # step-wise: no token yet
            if reason:
                done.append((g, reason))
            else:
                active[g.slot] = g
        self._charge(members, time.perf_counter() - t0, computed, prefill=True)
        for g, reason in done:
            self._done(g, self.result(g, *reason), finish)

    def _decode_round(self, active: dict[int, Generation], finish: Finish) -> None:
        if any(g.stepwise for g in active.values()):
            self._guided_round(active, finish)
            return
        t0 = time.perf_counter()
        slots = {slot: (*g.last, g.sampling()) for slot, g in active.items()}
        toks, computed = self.programs.decode(slots)
        members = list(active.values())
        done = []
        for slot, g in list(active.items()):
            for k in range(self.steps):
                g.out.append(int(toks[k, slot]))
                g.useful += 1
                reason = self.check_finish(g)
                if reason:
                    done.append((g, reason))
                    del active[slot]
                    break
        self._charge(members, time.perf_counter() - t0, computed, prefill=False)
        for g, reason in done:
            self._done(g, self.result(g, *reason), finish)

    def _guided_round(self, active: dict[int, Generation], finish: Finish) -> None:
        """One step of every slot with the guided program: constrained slots sample within
        their grammar's bitmask, which the host updates with the token before the next step."""
        t0 = time.perf_counter()
        bitmask = np.full((self.batch, self.programs.mask_words), -1, np.int32)
        wanted = np.zeros(self.batch, bool)
        rows = [(g.matcher, slot) for slot, g in active.items() if g.matcher is not None]
        fill = None
        if rows:
            masks = self.masks
            assert masks is not None, "a constrained sequence without a mask filler"
            fill = lambda: masks.fill(rows, bitmask)  # noqa: E731 (while the model runs)
        for slot, g in active.items():
            wanted[slot] = g.logprobs is not None
        slots = {slot: (*g.last, g.sampling()) for slot, g in active.items()}
        step, computed = self.programs.decode_guided(slots, bitmask, wanted, fill)
        members = list(active.values())
        done: list[tuple[Generation, Result]] = []
        for slot, g in list(active.items()):
            tok = int(step.tokens[slot])
            g.out.append(tok)
            g.useful += 1
            if g.logprobs is not None:
                g.logprobs.append(self._logprob(g, tok, step, slot))
            if g.matcher is not None and not g.matcher.consume_token(tok):
                del active[slot]
                done.append((g, Result.failed(
                    g.request.record_id, ErrorCode.ENGINE_FAILED,
                    f"the grammar engine refused token {tok} it had allowed: "
                    f"{g.matcher.get_error() or 'no reason given'}",
                )))  # fmt: skip
                continue
            reason = self.check_finish(g)
            if reason:
                del active[slot]
                done.append((g, self.result(g, *reason)))
        self._charge(members, time.perf_counter() - t0, computed, prefill=False)
        for g, res in done:
            self._done(g, res, finish)

    def _logprob(self, g: Generation, tok: int, step: Any, slot: int) -> TokenLogprob:
        k = g.request.sampling.logprobs or 0
        top = [int(i) for i in step.top_ids[slot, :k]]
        top_lps = [float(lp) for lp in step.top_logprobs[slot, :k]]
        text, raw = self.tokenizer.token_text, self.tokenizer.token_bytes
        return TokenLogprob(
            token=text(tok),
            logprob=float(step.logprob[slot]),
            top=tuple((text(i), lp) for i, lp in zip(top, top_lps, strict=True)),
            token_bytes=raw(tok),
            top_bytes=tuple(raw(i) for i in top),
        )

    def _done(self, g: Generation, res: Result, finish: Finish) -> None:
        """A sequence is over: its request's result, or (n > 1) one more of its choices."""
        group = g.group
        if group is None:
            finish(g.key, res)
            return
        group.done[g.index] = (g, res)
        if len(group.done) == group.n:
            finish(group.key, combine(group))

    def _charge(
        self, members: Sequence[Generation], seconds: float, computed: int, prefill: bool
    ) -> None:
        """Add one iteration to the totals and share it out by useful slots."""
        useful = sum(g.useful for g in members)
        st = self.stats
        st.busy_seconds += seconds
        st.computed_token_slots += computed
        st.useful_token_slots += useful
        if prefill:
            st.prefill_seconds += seconds
        for g in members:
            share = g.useful / useful if useful else 1.0 / len(members)
            g.charge = g.charge + Charge(
                busy_seconds=seconds * share,
                prefill_seconds=seconds * share if prefill else 0.0,
                computed_token_slots=computed * share,
                useful_token_slots=g.useful,
            )
            g.useful = 0

    # -- admission ----------------------------------------------------------------------------

    def admit(
        self,
        pending: collections.deque[Generation],
        free: list[int],
        carried: list[tuple[Generation, Part]] | None = None,
        overlap: bool = False,
    ) -> tuple[list[Generation], int]:
        """Prefill the prompts ``carried`` over from the last round, then as many waiting
        requests as there are free slots; returns every generation that took part and the
        token slots the prefill calls computed.

        Packed prefill with ``overlap`` (decode work to do meanwhile) and requests still
        waiting does not pad its last call: the prompts in it are left in ``carried`` (holding
        their slots, prefilled up to there) and go first in the next round, whose calls they
        help fill. Their slots idle through the decode calls in between, a few token slots
        where the padding would have been up to a whole call."""
        if carried is None:
            carried = []
        pinned: dict[tuple[int, ...], int] = {}  # prefixes this round uses -> store row
        for g, (_, _, load, _) in carried:
            if load != self.none:  # a first piece still to load its prefix (kept since)
                assert self.store.row_of(g.prefix) == load, "a carried prefix left the store"
                pinned[g.prefix] = load
        chosen: list[Generation] = []
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
        _, computed_a = self._prefill(
            [(g, (0, g.prefix_len, self.none, pinned[g.prefix])) for g in creators]
        )
        # phase B: every request's own tokens after its (loaded) prefix, carried ones first
        parts, continuing = list(carried), [g for g, _ in carried]
        carried.clear()
        for g in chosen:
            if g.prefix_len:
                parts.append((g, (g.prefix_len, g.prefill_end, pinned[g.prefix], self.none)))
            elif g.prefill_end:  # (a one-token step-wise prompt has nothing to prefill)
                parts.append((g, (0, g.prefill_end, self.none, self.none)))
        carry = carried if overlap and pending and self.packed else None
        firsts, computed_b = self._prefill(parts, carry)
        for g, tok in firsts:
            if not g.stepwise:  # a step-wise sequence's first token comes from decode
                g.out.append(int(tok))
        return continuing + chosen, computed_a + computed_b

    def _row(self, g: Generation, part: Part) -> PrefillRow:
        a, e, load, save = part
        g.useful += e - a
        return PrefillRow(g.ids[a:e], g.slot, a, load, save, g.sampling())

    def _prefill(
        self,
        parts: list[tuple[Generation, Part]],
        carry: list[tuple[Generation, Part]] | None = None,
    ) -> tuple[list[tuple[Generation, int]], int]:
        """Prefill calls for (generation, part), packed or by bucket: (generation, next token)
        for every part prefilled to its end, and the token slots computed. ``carry`` (packed
        only): where the parts of a last call that would be mostly padding go instead."""
        if self.packed:
            return self._prefill_in_pieces(parts, carry)
        by_bucket: dict[int, list[tuple[Generation, Part]]] = collections.defaultdict(list)
        for g, part in parts:
            by_bucket[bucket_of(part[1] - part[0], self.buckets)].append((g, part))
        out: list[tuple[Generation, int]] = []
        computed = 0
        for t, items in sorted(by_bucket.items()):
            p_rows = self.programs.shapes.rows_per_bucket[t]
            for i in range(0, len(items), p_rows):
                chunk = items[i : i + p_rows]
                toks, n = self.programs.prefill(t, [self._row(g, part) for g, part in chunk])
                computed += n
                out.extend((g, int(toks[j])) for j, (g, _) in enumerate(chunk))
        return out, computed

    def _prefill_in_pieces(
        self,
        parts: list[tuple[Generation, Part]],
        carry: list[tuple[Generation, Part]] | None = None,
    ) -> tuple[list[tuple[Generation, int]], int]:
        """Packed prefill of the parts, each split where a call is full (only its first piece
        loads the prefix, only its last saves and samples). A last call that is not full is
        left to ``carry`` when given and its padding exceeds what its sequences' idle slots can
        cost until the next round (at most ``CARRY_CALLS`` decode calls of ``steps`` token
        slots each, a decode slot counted as two prefill tokens); a sequence is carried once
        at most. Every piece in that call ends its part, so the rest of each part is carried."""
        sh = self.programs.shapes
        out: list[tuple[Generation, int]] = []
        call: list[tuple[Generation, Part]] = []
        ends: list[bool] = []  # does call[i] end its part?
        room, computed = sh.prefill_tokens, 0

        def run() -> None:
            nonlocal computed
            toks, n = self.programs.prefill_packed([self._row(g, p) for g, p in call])
            computed += n
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
        idle_cost = 2 * CARRY_CALLS * self.steps * len(call)
        if call and carry is not None and room > idle_cost and not any(g.carried for g, _ in call):
            carry.extend(call)
        elif call:
            run()
        return out, computed

    # -- finishing ----------------------------------------------------------------------------

    def check_finish(self, g: Generation) -> tuple[FinishReason, str] | None:
        """After appending a token: is the request done? (reason, final text)."""
        sp = g.request.sampling
        last = g.out[-1]
        if last in g.stop_ids:
            return FinishReason.STOP, self.tokenizer.decode(g.out[:-1])
        if g.matcher is not None and g.matcher.is_stopped():  # the grammar is complete
            return FinishReason.STOP, self.tokenizer.decode(g.out)
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
            logprobs=tuple(g.logprobs) if g.logprobs is not None else None,
            charge=g.charge,
        )


def combine(group: Group) -> Result:
    """One result for the ``n`` choices of a request: every choice (the first also as the
    result's own text), the prompt counted once, the choices' tokens and charges summed. A choice
    that failed fails the request (with the charges of all)."""
    parts = [group.done[i] for i in range(group.n)]
    charge = sum((r.charge for _, r in parts), Charge())
    failed = next((r for _, r in parts if not r.ok), None)
    if failed is not None:
        return dataclasses.replace(failed, charge=charge)
    choices = tuple(
        Choice(i, r.text or "", r.finish_reason or FinishReason.STOP, r.token_ids, r.logprobs)
        for i, (_, r) in enumerate(parts)
    )
    first = parts[0][1]
    return dataclasses.replace(
        first,
        usage=Usage(
            prompt_tokens=first.usage.prompt_tokens,
            completion_tokens=sum(r.usage.completion_tokens for _, r in parts),
            cached_tokens=min(r.usage.cached_tokens for _, r in parts),
        ),
        choices=choices,
        charge=charge,
    )
