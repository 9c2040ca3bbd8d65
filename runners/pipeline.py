"""The batch pipeline: input files -> shards -> records -> engine -> committed shard files -> manifest.

    match files ─► plan shards, write id hashes by bucket ─► (all planned) ─► find repeats per bucket
                          │                                                        │ side input
                          └─► reshuffle ─► serve shard ◄───────────────────────────┘
                                              └─► stats ─► manifest

Duplicate ids are found job-wide in bounded memory (``dedup``). Each shard is read by byte range, parsed and validated, served by the per-process engine (see
``engine_adapter``) and committed (``shards.commit``); a rerun of the same job id skips committed
shards. Records never travel through Beam: only shard descriptions and statistics do, so memory
stays bounded by one shard whatever the input size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from hyperbatch import storage
from hyperbatch.jobs import lease, manifest
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.layout import JobFolder, ShardFiles
from hyperbatch.jobs.manifest import ShardStats
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.runners import budget, dedup, engine_adapter, shards
from hyperbatch.runners import images as image_reading
from hyperbatch.runners.options import local_options, local_runner, shards_in_flight
from hyperbatch.runners.progress import PROGRESS
from hyperbatch.schemas import image_outputs
from hyperbatch.schemas.formats import (
    FORMATS,
    InputFormat,
    JobInfo,
    Parsed,
    RecordError,
    check_model,
)
from hyperbatch.schemas.formats.jsonl import PromptJsonl
from hyperbatch.schemas.image_outputs import IMAGE_FORMATS
from hyperbatch.schemas.records import Counters, ErrorCode, TaskKind
from hyperbatch.schemas.vectors import VECTOR_WRITERS, VectorWriter

log = logging.getLogger(__name__)
NAMESPACE = "hyperbatch"


@dataclasses.dataclass(frozen=True)
class JobContext:
    spec: JobSpec
    job_id: str
    started_at: float
    attempt: str | None = None  # this run's attempt id (the lease's); None on Dataflow

    @property
    def job_dir(self) -> str:
        return self.spec.job_dir(self.job_id)

    @property
    def folder(self) -> JobFolder:
        return JobFolder(self.job_dir)


# --------------------------------------------------------------------------- planning


def match_inputs(ctx: JobContext) -> list[tuple[int, storage.FileInfo, int]]:
    """(file index, file, id-bucket count) for every input file, in path order. An image
    glob's input is the listing of the files it matches (``runners.images``)."""
    if ctx.spec.input_format == "images":
        files = [image_reading.write_listing(ctx.spec.input, ctx.folder.image_listing)]
    else:
        files = storage.glob(ctx.spec.input)
    n_buckets = dedup.bucket_count(sum(f.size for f in files))
    return [(i, f, n_buckets) for i, f in enumerate(files)]


class PlanFile(beam.DoFn):
    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.planned = Metrics.counter(NAMESPACE, "records_planned")

    def process(self, item: tuple[int, storage.FileInfo, int]) -> Iterator[shards.Shard]:
        file_index, info, n_buckets = item
        fmt = FORMATS[self.ctx.spec.input_format]
        ids = dedup.SightingWriter(self.ctx.job_dir, file_index, n_buckets)
        for x in shards.plan_file(file_index, info, fmt, self.ctx.spec.records_per_shard):
            if isinstance(x, shards.Shard):
                self.planned.inc(x.records)
                PROGRESS.add(records_planned=x.records, shards_planned=1)
                yield x
            else:
                ids.add(x.record_id, x.line)
        ids.close()


def bucket_indexes(_: int, counts: list[int]) -> list[int]:
    return [b for k in counts for b in range(k)]


# --------------------------------------------------------------------------- serving


class ServeShard(beam.DoFn):
    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self._repeats_key: int | None = None
        self._repeats: dict[tuple[int, int], tuple[int, int]] = {}
        self.records = Metrics.counter(NAMESPACE, "records_done")
        self.errors = Metrics.counter(NAMESPACE, "record_errors")
        self.tokens = Metrics.counter(NAMESPACE, "completion_tokens")

    def _repeat_index(self, repeats: list) -> dict[tuple[int, int], tuple[int, int]]:
        if self._repeats_key != id(repeats):
            self._repeats = {(f, line): (ff, fl) for f, line, ff, fl in repeats}
            self._repeats_key = id(repeats)
        return self._repeats

    def process(self, shard: shards.Shard, repeats: list) -> Iterator[ShardStats]:
        spec = self.ctx.spec
        fmt = FORMATS[spec.input_format]
        writer = vector_writer(spec)
        outputs = self.ctx.folder.shard(
            shard.name,
            fmt.result_suffix,
            writer.suffix if writer else None,
            image_index=spec.task == TaskKind.IMAGE,
        )
        done = shards.committed_stats(shard, outputs)
        if done is not None:
            c = done.counters
            PROGRESS.add(records=c.records, results=c.results, errors=c.errors, shards=1,
                         shards_resumed=1)  # fmt: skip
            yield done
            return
        cap = budget.for_job(self.ctx.spec, self.ctx.job_dir, self.ctx.attempt)  # max_cost_usd
        if cap is not None and not cap.admit(shard.name, shard.records):
            yield budget.left(shard.name, shard.records)  # not served: the manifest counts it
            return

        attempt = object()  # this attempt's share of the process's accelerator time
        engine_adapter.LEDGER.start(attempt)
        try:
            stats = self._serve(shard, fmt, outputs, repeats, attempt)
        finally:
            engine_adapter.LEDGER.discard(attempt)  # a failed attempt's share: not committed
            if cap is not None:
                cap.release(shard.name)
        yield stats

    def _serve(
        self,
        shard: shards.Shard,
        fmt: InputFormat,
        outputs: ShardFiles,
        repeats: list,
        attempt: object,
    ) -> ShardStats:
        spec = self.ctx.spec
        started = time.time()
        repeat_index = self._repeat_index(repeats)
        task, defaults = TaskKind(spec.task), spec.default_sampling
        valid: list[Parsed] = []
        errors: list[RecordError] = []
        files = {}
        records, digest = shards.read_shard(shard, fmt)
        for location, raw in records:
            repeat = repeat_index.get((shard.file_index, location.line))
            if repeat is not None:
                rid, (first_file, first_line) = fmt.record_id(raw), repeat
                if first_file not in files:
                    files[first_file] = storage.glob(spec.input)[first_file].path
                errors.append(RecordError(
                    rid, location, ErrorCode.DUPLICATE_ID,
                    f"id {rid!r} repeats the record at {files[first_file]}:{first_line}; "
                    "only the first is served: give every record its own id",
                ))  # fmt: skip
                continue
            item = fmt.parse(raw, location, task, defaults)
            if isinstance(item, Parsed):  # the model the record names must be one served here
                item = check_model(item, spec.served_model_names, spec.model_mismatch)
            if isinstance(item, Parsed) and item.request.texts is not None:
                item = job_dimensions(item, spec)
            if isinstance(item, Parsed) and item.request.image is not None:
                item = job_image_defaults(item, spec)
            if isinstance(item, RecordError):
                errors.append(item)
            else:
                valid.append(item)
        held = image_reading.Held()  # this shard's image bytes, counted against the bound
        if spec.input_format == "images" or any(p.request.input_images for p in valid):
            # images fetched and checked (not decoded); one that cannot be read: an error record
            valid, unread, held = image_reading.read_images(valid, spec)
            errors += unread
        try:
            records_in = len(valid) + len(errors)
            if records_in != shard.records:
                raise RuntimeError(
                    f"{shard.name}: read {records_in} records, planned {shard.records}"
                )
            PROGRESS.add(records=len(errors), errors=len(errors))

            def on_result(result) -> None:
                PROGRESS.add(
                    records=1,
                    results=int(result.ok),
                    errors=int(not result.ok),
                    completion_tokens=result.usage.completion_tokens,
                    prompt_tokens=result.usage.prompt_tokens if result.embeddings else 0,
                    images=len(result.images or ()),
                )

            served = None
            if valid:
                loop = engine_adapter.shared_loop(spec)  # loads on the process's first shard
                served = engine_adapter.serve(loop, valid, on_result)
        finally:
            held.release()  # served (or failed): the engine is done with the images' bytes
        ok: list[tuple[Parsed, Any]] = []
        for parsed, result in zip(valid, served.results if served else [], strict=True):
            if result.ok:
                ok.append((parsed, result))
            else:
                errors.append(parsed.failed(
                    result.error_code or ErrorCode.ENGINE_FAILED,
                    result.error_message or str(result.error_code),
                ))  # fmt: skip
        errors.sort(key=lambda e: e.location.line)
        # The engine's share: time, token slots and compilations (plus load and warmup on the
        # process's first shard); records and tokens are counted from this shard's own results.
        delta = served.engine_delta if served else Counters()
        counters = dataclasses.replace(
            delta,
            records=records_in,
            results=len(ok),
            errors=len(errors),
            prompt_tokens=sum(r.usage.prompt_tokens for _, r in ok),
            completion_tokens=sum(r.usage.completion_tokens for _, r in ok),
            cached_tokens=sum(r.usage.cached_tokens for _, r in ok),
            embeddings=sum(len(r.embeddings or ()) for _, r in ok),
            images=sum(len(r.images or ()) for _, r in ok),
            input_images=sum(len(p.request.input_images) for p, _ in ok),
            image_tokens=sum(r.usage.image_tokens for _, r in ok),
            shards=1,
        )
        job = JobInfo(self.ctx.job_id, spec.served_model_names[0], int(started), task)
        image_files: list[tuple[str, bytes, str]] = []
        index = None
        if task is TaskKind.IMAGE:
            ok, image_files = place_images(ok, spec, self.ctx.folder, job)
            index = PromptJsonl().encode_results(ok, job)  # our records: id -> images, seeds
        results_bytes = fmt.encode_results(ok, job)
        writer = vector_writer(spec)
        vectors = (writer.encode(ok), writer.content_type) if writer else None
        # its share of the process's time while shards were in flight (the model load included)
        counters.accelerator_seconds = engine_adapter.LEDGER.stop(attempt)
        stats = ShardStats(
            shard=shard.name,
            counters=counters,
            errors_by_code=_count_codes(errors),
            started_at=started,
            finished_at=time.time(),
            attempt=self.ctx.attempt,
            lengths=manifest.Lengths.of(ok),  # what estimates calibrate on
        )
        shards.commit(
            shard, outputs, results_bytes, fmt.encode_errors(errors, job), stats,
            fmt.result_content_type, digest, vectors, image_files, index,
        )  # fmt: skip
        self.records.inc(records_in)
        self.errors.inc(len(errors))
        self.tokens.inc(counters.completion_tokens)
        PROGRESS.add(shards=1)
        return stats


def _count_codes(errors: list[RecordError]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in errors:
        out[str(e.code)] = out.get(str(e.code), 0) + 1
    return out


def job_image_defaults(item: Parsed, spec: JobSpec) -> Parsed:
    """An image record with the job's defaults (spec ``image``) where it says nothing."""
    p, d = item.request.image, spec.image_defaults
    assert p is not None
    filled = dataclasses.replace(
        p,
        negative_prompt=d.negative_prompt if p.negative_prompt is None else p.negative_prompt,
        width=d.width if p.width is None else p.width,
        height=d.height if p.height is None else p.height,
        steps=d.steps if p.steps is None else p.steps,
        guidance_scale=d.guidance_scale if p.guidance_scale is None else p.guidance_scale,
        scheduler=d.scheduler if p.scheduler is None else p.scheduler,
    )
    return dataclasses.replace(item, request=dataclasses.replace(item.request, image=filled))


def place_images(
    ok: list[tuple[Parsed, Any]], spec: JobSpec, folder: JobFolder, job: JobInfo
) -> tuple[list[tuple[Parsed, Any]], list[tuple[str, bytes, str]]]:
    """Encode every image (its generation parameters inside); those asked for as files get a
    path in the job folder (written in the shard's commit), the others travel inline. Returns
    the results with each image's ``uri`` or ``data`` in place of its pixels, and the files."""
    fmt = IMAGE_FORMATS[spec.image_defaults.format]
    files: list[tuple[str, bytes, str]] = []
    out = []
    for parsed, res in ok:
        req, params = parsed.request, parsed.request.image
        assert params is not None
        placed = []
        for k, img in enumerate(res.images or ()):
            data = image_outputs.encode(img.pixels, fmt, {
                "prompt": req.prompt, "negative_prompt": params.negative_prompt,
                "seed": img.seed, "steps": img.steps, "scheduler": img.scheduler,
                "guidance_scale": img.guidance_scale, "size": f"{img.width}x{img.height}",
                "model": job.model, "job_id": job.job_id, "record_id": req.record_id,
            })  # fmt: skip
            if params.response_format == "b64_json":
                placed.append(dataclasses.replace(img, pixels=None, data=data))
                continue
            path = folder.image(image_outputs.file_name(req.record_id, k, fmt))
            files.append((path, data, fmt.content_type))
            placed.append(dataclasses.replace(img, pixels=None, uri=path))
        out.append((parsed, dataclasses.replace(res, images=tuple(placed))))
    return out, files


def job_dimensions(item: Parsed, spec: JobSpec) -> Parsed | RecordError:
    """An embedding record with the job's ``dimensions`` unless it asks for its own; with a
    ``vector_output`` every vector goes to one index, so a record may not ask for another size."""
    req = item.request
    if req.dimensions is None:
        if spec.dimensions is None:
            return item
        return dataclasses.replace(
            item, request=dataclasses.replace(req, dimensions=spec.dimensions)
        )
    if spec.vector_output != "none" and req.dimensions != spec.dimensions:
        size = f"{spec.dimensions}" if spec.dimensions else "the model's"
        return item.failed(
            ErrorCode.INVALID_DIMENSIONS,
            f"dimensions {req.dimensions}: this job writes every vector to one {spec.vector_output} "
            f"index, all of {size} dimensions; set dimensions in the job spec, not per record",
        )  # fmt: skip
    return item


def vector_writer(spec: JobSpec) -> VectorWriter | None:
    """The writer of an embedding job's vector files, if its spec asks for them."""
    return VECTOR_WRITERS.get(spec.vector_output)


def write_manifest(stats: list[ShardStats], ctx: JobContext) -> dict[str, Any]:
    suffix = FORMATS[ctx.spec.input_format].result_suffix
    writer = vector_writer(ctx.spec)
    m = manifest.build(
        job_id=ctx.job_id,
        spec=ctx.spec,
        shards=stats,
        wall_seconds=time.time() - ctx.started_at,
        results_glob=ctx.folder.results_glob(suffix),
        errors_glob=ctx.folder.errors_glob(),
        vectors_glob=ctx.folder.vectors_glob(writer.suffix) if writer else None,
        images_glob=ctx.folder.images_glob() if ctx.spec.task == TaskKind.IMAGE else None,
        attempts=lease.attempts(ctx.job_dir),
        attempt=ctx.attempt,
    )
    manifest.write(ctx.job_dir, m)
    dedup.cleanup(ctx.job_dir)
    return m


# --------------------------------------------------------------------------- the graph


def build(p: beam.Pipeline, ctx: JobContext) -> beam.PCollection:
    files = p | "Start" >> beam.Create([ctx]) | "MatchInputs" >> beam.FlatMap(match_inputs)
    planned = files | "SpreadFiles" >> beam.Reshuffle() | "PlanShards" >> beam.ParDo(PlanFile(ctx))
    n_buckets = files | "BucketCount" >> beam.Map(lambda f: f[2]) | beam.Distinct()
    repeats = (
        planned
        | "AllPlanned" >> beam.combiners.Count.Globally()
        | "Buckets" >> beam.FlatMap(bucket_indexes, beam.pvalue.AsList(n_buckets))
        | "SpreadBuckets" >> beam.Reshuffle()
        | "FindRepeats" >> beam.FlatMap(lambda b: dedup.find_repeats(ctx.job_dir, b))
    )
    return (
        planned
        | "SpreadShards" >> beam.Reshuffle()
        | "ServeShards" >> beam.ParDo(ServeShard(ctx), repeats=beam.pvalue.AsList(repeats))
        | "CollectStats" >> beam.combiners.ToList()
        | "WriteManifest" >> beam.Map(write_manifest, ctx)
    )


def record_spec(ctx: JobContext) -> None:
    job_spec.record_once(ctx.spec, ctx.job_id, ctx.job_dir)


def run(
    spec: JobSpec,
    job_id: str | None = None,
    options: Any = None,
    runner: Any = None,
) -> dict[str, Any]:
    """Run (or resume) a job to completion and return its manifest.

    The run holds the job folder's lease (``jobs.lease``): a second run of the same job while
    this one is alive is refused (LeaseHeld); one that finds a stale lease takes it over."""
    job_id = job_id or spec.job_id
    record_spec(JobContext(spec, job_id, time.time()))
    with lease.held(spec.job_dir(job_id)) as held:
        ctx = JobContext(spec, job_id, held.started_unix, held.attempt)
        PROGRESS.reset()
        if options is None:  # several shards in flight, feeding the process's one engine loop
            options = local_options(
                threads=shards_in_flight(spec.batch_size, spec.records_per_shard)
            )
        p = beam.Pipeline(runner=runner or local_runner(), options=options)
        build(p, ctx)
        p.run().wait_until_finish()
        return manifest.read(ctx.job_dir)
