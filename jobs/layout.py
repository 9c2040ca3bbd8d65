"""The names inside a job folder and a job store: the one module that knows them.

    <root>/<job_id>/spec.json              the normalized spec (written once)
    <root>/<job_id>/status.json            the job's state (the job store; see jobs.store)
    <job_dir>/results/<shard><suffix>      a shard's results (suffix from the input format)
    <job_dir>/errors/<shard>.jsonl         a shard's error records (only if it had any)
    <job_dir>/vectors/<shard><suffix>      an embedding shard's vectors (vector_output: parquet
                                           or vertex_vector_search)
    <job_dir>/images/<name>                an image job's images (names: schemas.image_outputs)
    <job_dir>/images/_index/<shard>.jsonl  an image shard's index: record id -> images, seeds
    <job_dir>/_commits/<shard>.json        a shard's commit marker, with its statistics
    <job_dir>/_plan/ids/<bucket>/...       the planner's id hashes (removed when the job ends)
    <job_dir>/_plan/images.jsonl           input_format images: the image files it matched
    <job_dir>/manifest.json, manifest.avro the cost manifest and its Avro twin
    <job_dir>/launch.log                   the local job process's log
    <job_dir>/_lease.json                  the running attempt's lease (one runner per job)
    <job_dir>/_attempts/<attempt>.json     every attempt: started, last seen, finished
    <root>/_rejected/<key>.json            trigger messages that could never become a job

``job_dir`` is ``<spec.output>/<job_id>``; with the job store's root equal to the spec's output
(recommended) the two folders are one.
"""

from __future__ import annotations

import dataclasses

from hyperbatch import storage

SPEC = "spec.json"
STATUS = "status.json"
MANIFEST_JSON = "manifest.json"
MANIFEST_AVRO = "manifest.avro"
RESULTS = "results"
ERRORS = "errors"
VECTORS = "vectors"
IMAGES = "images"
IMAGE_INDEX = "images/_index"
COMMITS = "_commits"
PLAN_IDS = "_plan/ids"
PLAN_IMAGES = "_plan/images.jsonl"
LAUNCH_LOG = "launch.log"
LEASE = "_lease.json"
ATTEMPTS = "_attempts"
REJECTED = "_rejected"
ERRORS_SUFFIX = ".jsonl"

#: Files hyperbatch writes into job folders (never job specs, even under a watched prefix).
OWN_FILES = frozenset({SPEC, STATUS, MANIFEST_JSON, LEASE})
#: Folders hyperbatch writes into job folders and stores, as path fragments.
OWN_FOLDERS = (f"/{COMMITS}/", "/_plan/", f"/{REJECTED}/", "/_dataflow/", f"/{ATTEMPTS}/")


@dataclasses.dataclass(frozen=True)
class ShardFiles:
    """Where one shard's outputs go."""

    results: str
    errors: str
    marker: str
    vectors: str | None = None  # embedding jobs with a vector_output
    index: str | None = None  # image jobs: the shard's index of its images


@dataclasses.dataclass(frozen=True)
class JobFolder:
    """The paths of one job folder (a local directory or a gs:// prefix)."""

    path: str

    def _join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    @property
    def spec(self) -> str:
        return self._join(SPEC)

    @property
    def status(self) -> str:
        return self._join(STATUS)

    @property
    def manifest_json(self) -> str:
        return self._join(MANIFEST_JSON)

    @property
    def manifest_avro(self) -> str:
        return self._join(MANIFEST_AVRO)

    @property
    def launch_log(self) -> str:
        return self._join(LAUNCH_LOG)

    @property
    def commits_prefix(self) -> str:
        """The prefix every commit marker starts with (for listing)."""
        return self._join(COMMITS) + "/"

    @property
    def lease(self) -> str:
        return self._join(LEASE)

    @property
    def attempts_prefix(self) -> str:
        return self._join(ATTEMPTS) + "/"

    def attempt(self, attempt: str) -> str:
        return self._join(ATTEMPTS, f"{attempt}.json")

    @property
    def plan_ids(self) -> str:
        return self._join(PLAN_IDS)

    @property
    def image_listing(self) -> str:
        """input_format images: the matched image files, listed (the planner's input)."""
        return self._join(PLAN_IMAGES)

    def shard(
        self,
        name: str,
        result_suffix: str,
        vector_suffix: str | None = None,
        image_index: bool = False,
    ) -> ShardFiles:
        return ShardFiles(
            results=self._join(RESULTS, f"{name}{result_suffix}"),
            errors=self._join(ERRORS, f"{name}{ERRORS_SUFFIX}"),
            marker=self._join(COMMITS, f"{name}.json"),
            vectors=self._join(VECTORS, f"{name}{vector_suffix}") if vector_suffix else None,
            index=self._join(IMAGE_INDEX, f"{name}.jsonl") if image_index else None,
        )

    def image(self, file_name: str) -> str:
        """Where an image file goes (``file_name`` from ``schemas.image_outputs.file_name``)."""
        if "/" in file_name or file_name.startswith("."):
            raise ValueError(f"not a plain file name: {file_name!r}")
        return self._join(IMAGES, file_name)

    def images_glob(self) -> str:
        return self._join(IMAGES, "*")

    def image_index_glob(self) -> str:
        return self._join(IMAGE_INDEX, "*.jsonl")

    def vectors_glob(self, vector_suffix: str) -> str:
        return self._join(VECTORS, f"*{vector_suffix}")

    def results_glob(self, result_suffix: str) -> str:
        return self._join(RESULTS, f"*{result_suffix}")

    def errors_glob(self) -> str:
        return self._join(ERRORS, f"*{ERRORS_SUFFIX}")

    def committed_shards(self) -> list[str]:
        """Names of the shards whose commit marker exists, sorted."""
        prefix = self.commits_prefix
        return sorted(
            f.path[len(prefix) : -len(".json")]
            for f in storage.list_prefix(prefix)
            if f.path.endswith(".json") and "/" not in f.path[len(prefix) :]
        )
