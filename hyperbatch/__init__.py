"""hyperbatch: serverless batch inference on Google Cloud (Beam pipelines, TPU/GPU engines).

One import namespace, in layers that point one way (each imports only the layers below it; a
contract in ``pyproject.toml`` is checked by ``make test``):

    hyperbatch.cli          the command line: the composition root, above everything
    hyperbatch.runners      Apache Beam: the pipeline, shards, the engine adapter, launchers
    hyperbatch.jobs         the job as a user sees it: spec, job store, triggers, pricing, manifest
    hyperbatch.engines      the Engine contract, the registry, the JAX and vLLM engines, models
    hyperbatch.schemas      records, the input/output formats and their Avro schemas
    hyperbatch.storage ...  the bottom: local + gs:// storage, retry policies, accelerators

The repository keeps the design's top-level folders ``jobs/``, ``runners/``, ``engines/`` and
``schemas/``; ``setup.py`` installs them as the subpackages above.
"""

__version__ = "0.1.0"
