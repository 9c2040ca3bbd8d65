"""terraform/ checked without a cloud: it parses, its structure holds, and its names are the code's.

The google provider cannot be downloaded here, so ``terraform validate`` and ``plan`` never run.
What can run does: every ``.tf`` file is parsed with python-hcl2; the structural checks below
read the parsed blocks; the names Terraform uses (the trigger's command line, environment
variables, Flex Template parameters, the JobRequest schema, accelerator shapes) are compared
with the code through its stable entry points (click introspection of ``hyperbatch.cli.main``,
``docker/flex-template/metadata.json``, ``schemas/*.avsc``). Where a ``terraform`` binary exists,
``terraform fmt -check`` runs, and the provider-free files ``shapes.tf`` (dataflow) and
``request.tf`` (pipeline) are evaluated with ``terraform console``. checkov runs under
``make checkov`` (its own virtualenv), and here too when that virtualenv exists.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tests.optional import require, unavailable

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
MODULES = TERRAFORM / "modules"
EXAMPLES = TERRAFORM / "examples"
METADATA = REPO / "docker" / "flex-template" / "metadata.json"
JOB_REQUEST_SCHEMA = REPO / "schemas" / "job_request.avsc"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

MODULE_NAMES = ("storage", "pubsub", "trigger", "dataflow", "pipeline")
MODULE_FILES = ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md")
META_ARGUMENTS = {"source", "version", "count", "for_each", "depends_on", "providers"}
BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
PUBLIC_PRINCIPALS = ("allUsers", "allAuthenticatedUsers")

# =========================================================================== parsing


def _hcl2() -> Any:
    return require("hcl2", "python-hcl2 parses the Terraform files (the test extra installs it)")


def parse(path: Path) -> dict[str, Any]:
    return _parse(str(path))


@functools.cache
def _parse(path: str) -> dict[str, Any]:
    hcl2 = _hcl2()
    options = hcl2.SerializationOptions(
        strip_string_quotes=True, explicit_blocks=False, with_comments=False
    )
    with open(path) as f:
        return hcl2.load(f, serialization_options=options)


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def config_dirs() -> list[Path]:
    return sorted({p.parent for p in tf_files()})


def _labelled(blocks: list[dict[str, Any]], depth: int) -> Iterator[tuple[tuple[str, ...], Any]]:
    """({"a": {"b": body}}, depth 2) -> (("a", "b"), body)."""
    for block in blocks:
        yield from _walk_labels(block, depth, ())


def _walk_labels(node: Any, depth: int, labels: tuple[str, ...]) -> Iterator[Any]:
    if depth == 0:
        yield labels, node
        return
    for key, value in node.items():
        yield from _walk_labels(value, depth - 1, (*labels, key))


@dataclasses.dataclass
class Config:
    """One Terraform module (a directory of .tf files), its blocks by kind."""

    path: Path
    variables: dict[str, dict[str, Any]]
    variable_order: list[str]  # as declared in variables.tf
    outputs: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    modules: dict[str, dict[str, Any]]
    resources: dict[tuple[str, str], dict[str, Any]]
    data: dict[tuple[str, str], dict[str, Any]]
    terraform: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return (
            str(self.path.relative_to(REPO)) if self.path.is_relative_to(REPO) else str(self.path)
        )


@functools.cache
def load(path: Path) -> Config:
    cfg = Config(path, {}, [], {}, {}, {}, {}, {}, [])
    for file in sorted(path.glob("*.tf")):
        doc = parse(file)
        for (name,), body in _labelled(doc.get("variable", []), 1):
            cfg.variables[name] = body
            if file.name == "variables.tf":
                cfg.variable_order.append(name)
        for (name,), body in _labelled(doc.get("output", []), 1):
            cfg.outputs[name] = body
        for block in doc.get("locals", []):
            cfg.locals.update(block)
        for (name,), body in _labelled(doc.get("module", []), 1):
            cfg.modules[name] = body
        for labels, body in _labelled(doc.get("resource", []), 2):
            cfg.resources[labels] = body
        for labels, body in _labelled(doc.get("data", []), 2):
            cfg.data[labels] = body
        cfg.terraform.extend(doc.get("terraform", []))
    return cfg


def strings(node: Any, skip_keys: frozenset[str] = frozenset()) -> Iterator[str]:
    """Every string value in a parsed block (expressions are strings like "${...}")."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in skip_keys:
                yield from strings(value, skip_keys)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, skip_keys)


def config_strings(cfg: Config, skip_keys: frozenset[str] = frozenset()) -> Iterator[str]:
    for group in (cfg.variables, cfg.outputs, cfg.modules, cfg.resources, cfg.data):
        for body in group.values():
            yield from strings(body, skip_keys)
    yield from strings(cfg.locals, skip_keys)


def child(cfg: Config, module_name: str) -> Config | None:
    source = cfg.modules[module_name].get("source", "")
    if not source.startswith(("./", "../")):
        return None
    return load((cfg.path / source).resolve())


def first_block(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    blocks = body.get(name) or []
    return blocks[0] if blocks else None


def dynamic_content(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The content of `dynamic "name" { content { ... } }`, if there is one."""
    for block in body.get("dynamic", []):
        if name in block:
            return block[name]["content"][0]
    return None


# =========================================================================== references

_NAME = r"[A-Za-z_][\w-]*"
VAR_RE = re.compile(rf"(?<![\w.])var\.({_NAME})")
LOCAL_RE = re.compile(rf"(?<![\w.])local\.({_NAME})(?:\.({_NAME}))?")
MODULE_RE = re.compile(rf"(?<![\w.])module\.({_NAME})(?:\[[^\]]*\])?(?:\.({_NAME}))?")
DATA_RE = re.compile(rf"(?<![\w.])data\.([a-z][\w]*)\.({_NAME})")
RESOURCE_RE = re.compile(rf"(?<![\w./])(google_[a-z0-9_]+)\.({_NAME})")


def unresolved_references(cfg: Config) -> list[str]:
    """References to variables, locals, modules (and their outputs), resources and data
    sources that the configuration does not declare; module arguments the child does not take,
    and required child variables not passed."""
    problems = []
    for text in config_strings(cfg):
        for name in VAR_RE.findall(text):
            if name not in cfg.variables:
                problems.append(f"var.{name}")
        for name, _ in LOCAL_RE.findall(text):
            if name not in cfg.locals:
                problems.append(f"local.{name}")
        for name, output in MODULE_RE.findall(text):
            if name not in cfg.modules:
                problems.append(f"module.{name}")
                continue
            sub = child(cfg, name)
            if sub is not None and output and output not in sub.outputs:
                problems.append(f"module.{name}.{output} (no such output in {sub.name})")
        for kind, name in DATA_RE.findall(text):
            if (kind, name) not in cfg.data:
                problems.append(f"data.{kind}.{name}")
        for kind, name in RESOURCE_RE.findall(text):
            if (kind, name) not in cfg.resources:
                problems.append(f"{kind}.{name}")
    for name, body in cfg.modules.items():
        sub = child(cfg, name)
        if sub is None:
            continue
        given = set(body) - META_ARGUMENTS
        for arg in sorted(given - set(sub.variables)):
            problems.append(f'module "{name}": {sub.name} has no variable {arg}')
        required = {v for v, b in sub.variables.items() if "default" not in b}
        for arg in sorted(required - given):
            problems.append(f'module "{name}": required variable {arg} of {sub.name} not set')
    return sorted(set(problems))


def referenced_resources(cfg: Config, expression: str, depth: int = 0) -> set[tuple[str, str]]:
    """Resources an expression refers to, following locals (local.x and local.x.key)."""
    found = set(RESOURCE_RE.findall(expression))
    if depth > 5:
        return found
    for name, key in LOCAL_RE.findall(expression):
        value = cfg.locals.get(name)
        if key and isinstance(value, dict) and key in value:
            value = value[key]
        for text in strings(value):
            found |= referenced_resources(cfg, text, depth + 1)
    return found


# =========================================================================== the code's names


def cli_main() -> click.Group:
    from hyperbatch.cli import main

    return main


def cli_command(*path: str) -> click.Command:
    command: click.Command = cli_main()
    for name in path:
        assert isinstance(command, click.Group), f"{' '.join(path)}: {name} is not a group"
        assert name in command.commands, f"the CLI has no command {' '.join(path)}"
        command = command.commands[name]
    return command


def all_commands(group: click.Group | None = None) -> Iterator[click.Command]:
    group = group or cli_main()
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from all_commands(command)


def cli_envvars(command: click.Command | None = None) -> set[str]:
    commands = [command] if command else list(all_commands())
    out = set()
    for cmd in commands:
        for param in cmd.params:
            env = getattr(param, "envvar", None)
            out.update([env] if isinstance(env, str) else env or [])
    return out


def cli_option(command: click.Command, flag: str) -> click.Option:
    for param in command.params:
        if isinstance(param, click.Option) and flag in (*param.opts, *param.secondary_opts):
            return param
    raise AssertionError(f"`{command.name}` has no option {flag}")


def template_parameters() -> set[str]:
    return {p["name"] for p in json.loads(METADATA.read_text())["parameters"]}


def python_sources() -> list[Path]:
    roots = ["hyperbatch", "jobs", "runners", "engines", "schemas"]
    return [p for r in roots for p in (REPO / r).rglob("*.py")]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts if rel.parts[0] == "hyperbatch" else ("hyperbatch", *rel.parts)
    return ".".join(p for p in parts if p != "__init__")


def code_worker_shapes() -> dict[tuple[str, int], tuple[str, str | None]]:
    """(accelerator, count) -> (machine type, worker_accelerator), as the launcher computes it.

    Found by what the code defines rather than where: the accelerator table is moving between
    modules (an Accelerator with worker_accelerator(), or the older worker_shape function).
    """
    import importlib

    def defining(pattern: str) -> list[Any]:
        rx = re.compile(pattern, re.M)
        return [
            importlib.import_module(_module_name(p))
            for p in python_sources()
            if rx.search(p.read_text())
        ]

    for module in defining(r"^    def worker_accelerator\("):
        table = getattr(module, "ACCELERATORS", None)
        if table:
            shapes = {}
            for name, acc in table.items():
                for count in acc.counts() if acc.kind != "cpu" else (1,):
                    shapes[name, count] = (acc.machine_type(count), acc.worker_accelerator(count))
            return shapes
    for module in defining(r"^def worker_shape\("):
        shapes = {("cpu", 1): _shape(module.worker_shape("cpu", 1))}
        for table in (module.TPU_SLICES, module.GPU_MACHINES):
            for name, (_, per_count) in table.items():
                for count in per_count:
                    shapes[name, count] = _shape(module.worker_shape(name, count))
        return shapes
    pytest.fail(
        "found neither an ACCELERATORS table with worker_accelerator() nor worker_shape() in the "
        "code; update code_worker_shapes() to read the Dataflow worker shapes",
        pytrace=False,
    )


def _shape(shape: Any) -> tuple[str, str | None]:
    return shape.machine_type, shape.worker_accelerator


# =========================================================================== parse and format


@pytest.mark.parametrize("path", tf_files(), ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_tf_file_parses(path: Path) -> None:
    doc = parse(path)
    assert doc, f"{path} parsed to nothing"
    assert set(doc) <= {
        "terraform",
        "provider",
        "variable",
        "output",
        "locals",
        "module",
        "resource",
        "data",
    }, f"{path}: unexpected top-level blocks {sorted(doc)}"


def test_terraform_fmt() -> None:
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip(
            "no terraform binary here: `terraform fmt -check -recursive terraform/` skipped"
        )
    done = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


# =========================================================================== layout


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_module_has_the_terraform_google_modules_layout(module: str) -> None:
    path = MODULES / module
    missing = [f for f in MODULE_FILES if not (path / f).is_file()]
    assert not missing, f"modules/{module} lacks {missing}"
    versions = parse(path / "versions.tf")["terraform"][0]
    required = versions["required_version"]
    assert re.fullmatch(r">= ?1\.(7|8|9|1\d)(\.\d+)?", required), required
    providers = versions["required_providers"][0]
    for name in ("google", "google-beta"):
        assert providers[name]["source"] == f"hashicorp/{name}"
        assert re.fullmatch(r"~> ?\d+\.0", providers[name]["version"]), (
            f"modules/{module}: {name} must be pinned to one major version (~> N.0), "
            f"not {providers[name]['version']!r}"
        )
    assert load(path).variable_order[0] == "project_id", f"modules/{module}: project_id first"


@pytest.mark.parametrize("path", config_dirs(), ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_variables_are_typed_and_described_outputs_described(path: Path) -> None:
    cfg = load(path)
    problems = []
    for name, body in cfg.variables.items():
        if not body.get("type"):
            problems.append(f"variable {name} has no type")
        if len(str(body.get("description", "")).strip()) < 10:
            problems.append(f"variable {name} has no description")
    for name, body in cfg.outputs.items():
        if len(str(body.get("description", "")).strip()) < 10:
            problems.append(f"output {name} has no description")
    assert not problems, f"{cfg.name}: {problems}"


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_module_variables_that_can_be_wrong_are_validated(module: str) -> None:
    cfg = load(MODULES / module)
    assert cfg.variables["project_id"].get("validation"), "project_id must be validated"
    for name, body in cfg.variables.items():
        if body["type"] == "${number}":
            assert body.get("validation"), f"modules/{module}: number variable {name} unchecked"
        for rule in body.get("validation", []):
            assert f"var.{name}" in rule["condition"], f"{name}: validation must test var.{name}"
            assert len(rule["error_message"]) > 20, f"{name}: say what to do in error_message"


@pytest.mark.parametrize("path", config_dirs(), ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_reference_resolves(path: Path) -> None:
    assert unresolved_references(load(path)) == []


def test_the_reference_check_finds_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "main.tf").write_text(
        'variable "needed" {\n  type = string\n}\noutput "x" {\n  value = var.needed\n}\n'
    )
    (tmp_path / "main.tf").write_text(
        'variable "a" {\n  type = string\n}\n'
        'locals {\n  b = "${var.a}-${var.typo}"\n}\n'
        'resource "google_storage_bucket" "b" {\n  name = local.b\n  location = local.nope\n}\n'
        'module "c" {\n  source = "./child"\n  unknown = google_storage_bucket.b.name\n}\n'
        'output "o" {\n  value = [module.c.y, google_pubsub_topic.t.id, data.google_project.p.number]\n}\n'
    )
    problems = unresolved_references(load(tmp_path))
    assert len(problems) == 7, problems  # var.a and local.b resolve
    found = " | ".join(problems)
    for expected in (
        "var.typo",
        "local.nope",
        "module.c.y",
        "google_pubsub_topic.t",
        "data.google_project.p",
        "no variable unknown",
        "required variable needed",
    ):
        assert expected in found, f"{expected} not reported in {found}"


def test_every_module_is_used_by_an_example() -> None:
    used: set[Path] = set()

    def visit(path: Path) -> None:
        cfg = load(path)
        for name in cfg.modules:
            sub = child(cfg, name)
            if sub is not None and sub.path not in used:
                used.add(sub.path)
                visit(sub.path)

    examples = sorted(p for p in EXAMPLES.iterdir() if p.is_dir())
    assert len(examples) >= 4, examples
    for example in examples:
        visit(example)
    unused = [m for m in MODULE_NAMES if (MODULES / m).resolve() not in used]
    assert unused == [], f"modules no example uses: {unused}"


def test_examples_cover_the_four_deployments() -> None:
    names = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert {"cpu_quickstart", "tpu_v6e_pipeline", "l4_push_trigger", "scheduled_pipeline"} <= names
    shapes = {}
    for name in names:
        root = load(EXAMPLES / name).modules.get("hyperbatch", {})
        shapes[name] = (root.get("accelerator"), root.get("trigger"))
    assert shapes["cpu_quickstart"][0] == "cpu"
    assert shapes["tpu_v6e_pipeline"][0] == "tpu-v6e"
    assert shapes["l4_push_trigger"] == ("nvidia-l4", "push")
    scheduled = load(EXAMPLES / "scheduled_pipeline").modules
    assert any(m.get("schedule") for m in scheduled.values()), "no scheduled pipeline"
    for name in names:
        for f in ("main.tf", "variables.tf", "outputs.tf", "README.md"):
            assert (EXAMPLES / name / f).is_file(), f"examples/{name} lacks {f}"


# =========================================================================== security


def _all_configs() -> list[Config]:
    return [load(p) for p in config_dirs()]


def _resources(kind_re: str) -> Iterator[tuple[Config, tuple[str, str], dict[str, Any]]]:
    for cfg in _all_configs():
        for key, body in cfg.resources.items():
            if re.fullmatch(kind_re, key[0]):
                yield cfg, key, body


def test_nothing_is_granted_to_the_public() -> None:
    text_keys = frozenset({"description", "error_message"})  # may explain the refusal
    for cfg in _all_configs():
        for text in config_strings(cfg, skip_keys=text_keys):
            for principal in PUBLIC_PRINCIPALS:
                assert principal not in text, f"{cfg.name}: {principal} in {text!r}"


def test_no_basic_roles_and_no_project_level_storage_roles() -> None:
    iam = list(_resources(r"google_.*_iam_(member|binding|policy)"))
    assert len(iam) > 20, "the IAM check found suspiciously few grants"
    for cfg, key, body in iam:
        assert not key[0].endswith(("_iam_binding", "_iam_policy")), (
            f"{cfg.name}: {key[0]}.{key[1]} is authoritative; use *_iam_member"
        )
        role = body["role"]
        roles = referenced_roles(cfg, role)
        assert roles, f"{cfg.name}: {key[0]}.{key[1]} role {role!r} is not a literal role"
        assert not roles & BASIC_ROLES, f"{cfg.name}: basic role in {key[0]}.{key[1]}"
        if key[0].startswith("google_project_iam"):
            storage = {r for r in roles if r.startswith("roles/storage.")}
            assert not storage, f"{cfg.name}: project-level {storage}; grant it on buckets"
    for cfg in _all_configs():
        for text in config_strings(cfg, skip_keys=frozenset({"description"})):
            assert not set(re.findall(r"roles/[\w.]+", text)) & BASIC_ROLES, (cfg.name, text)


def referenced_roles(cfg: Config, expression: str) -> set[str]:
    """The literal roles an IAM resource's role expression can take: the literal itself, or for
    `each.value.role` every role written in the locals it iterates over."""
    found = set(re.findall(r"roles/[\w.]+", expression))
    if not found and expression == "${each.value.role}":
        for text in strings(cfg.locals):
            found |= set(re.findall(r"role = \\?\"(roles/[\w.]+)", text))
    return found


def test_every_bucket_has_ubla_and_public_access_prevention() -> None:
    buckets = list(_resources("google_storage_bucket"))
    assert {k[1] for _, k, _ in buckets} == {"job_store", "inputs", "staging"}
    for cfg, key, body in buckets:
        assert body.get("uniform_bucket_level_access") is True, f"{cfg.name}: {key} UBLA"
        assert body.get("public_access_prevention") == "enforced", f"{cfg.name}: {key} PAP"
        encryption = dynamic_content(body, "encryption")
        assert encryption, f"{cfg.name}: {key} has no optional CMEK"
        assert "default_kms_key_name" in encryption
    by_name = {k[1]: b for _, k, b in buckets}
    assert first_block(by_name["job_store"], "versioning")["enabled"] is True
    temp_rules = [
        r
        for r in by_name["staging"]["lifecycle_rule"]
        if r["action"][0]["type"] == "Delete" and r["condition"][0].get("matches_prefix")
    ]
    assert temp_rules, "the staging bucket must empty temp/"
    assert temp_rules[0]["condition"][0]["matches_prefix"] == ["temp/"]


def test_every_subscription_has_a_dead_letter_policy_and_the_agent_grants() -> None:
    subscriptions = list(_resources("google_pubsub_subscription"))
    assert subscriptions, "no subscription found"
    for cfg, key, body in subscriptions:
        where = f"{cfg.name}: {key[0]}.{key[1]}"
        policy = first_block(body, "dead_letter_policy")
        assert policy, f"{where}: no dead-letter policy"
        assert policy.get("max_delivery_attempts"), f"{where}: no max_delivery_attempts"
        assert first_block(body, "retry_policy"), f"{where}: no retry policy"
        dead_letter_topics = referenced_resources(cfg, policy["dead_letter_topic"])
        assert dead_letter_topics, f"{where}: dead_letter_topic names no topic resource"

        agent = _pubsub_agent_expressions(cfg)
        publishers = [
            b
            for (k, _), b in cfg.resources.items()
            if k == "google_pubsub_topic_iam_member"
            and b["role"] == "roles/pubsub.publisher"
            and any(a in b["member"] for a in agent)
            and referenced_resources(cfg, b["topic"]) >= dead_letter_topics
        ]
        assert publishers, f"{where}: the Pub/Sub service agent cannot publish dead letters"
        subscribers = [
            b
            for (k, _), b in cfg.resources.items()
            if k == "google_pubsub_subscription_iam_member"
            and b["role"] == "roles/pubsub.subscriber"
            and any(a in b["member"] for a in agent)
            and key in referenced_resources(cfg, b["subscription"])
            and b.get("for_each") == body.get("for_each")
            and b.get("count") == body.get("count")
        ]
        assert subscribers, f"{where}: the service agent is not subscriber on every instance"


def _pubsub_agent_expressions(cfg: Config) -> list[str]:
    """How the config names the Pub/Sub service agent: the local holding it, or its address."""
    names = [
        f"local.{k}"
        for k, v in cfg.locals.items()
        if "pubsub" in str(v)
        and ("google_project_service_identity" in str(v) or "gcp-sa-pubsub" in str(v))
    ]
    return [*names, "gcp-sa-pubsub"]


def test_spec_notifications_are_published_by_the_storage_agent() -> None:
    notifications = list(_resources("google_storage_notification"))
    assert notifications
    sources = "\n".join(p.read_text() for p in python_sources())
    assert "OBJECT_FINALIZE" in sources
    assert "JSON_API_V1" in sources
    for cfg, _, body in notifications:
        assert body["event_types"] == ["OBJECT_FINALIZE"]
        assert body["payload_format"] == "JSON_API_V1"
        topics = referenced_resources(cfg, body["topic"])
        grants = [
            b
            for (k, _), b in cfg.resources.items()
            if k == "google_pubsub_topic_iam_member"
            and b["role"] == "roles/pubsub.publisher"
            and "google_storage_project_service_account" in b["member"]
            and referenced_resources(cfg, b["topic"]) >= topics
        ]
        assert grants, f"{cfg.name}: the storage service agent may not publish to {topics}"
        assert any("gcs_publisher" in d for d in body.get("depends_on", [])), "grant first"


def test_trigger_service_is_internal_scales_to_zero_and_invoked_only_by_push() -> None:
    cfg = load(MODULES / "trigger")
    (service,) = [b for (k, _), b in cfg.resources.items() if k == "google_cloud_run_v2_service"]
    assert service["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    scaling = first_block(first_block(service, "template"), "scaling")
    assert scaling["min_instance_count"] == "${var.min_instances}"
    assert cfg.variables["min_instances"]["default"] == 0
    invokers = [
        b for (k, _), b in cfg.resources.items() if k.startswith("google_cloud_run_v2_service_iam")
    ]
    assert len(invokers) == 1
    assert invokers[0]["role"] == "roles/run.invoker"
    assert invokers[0]["member"] == "serviceAccount:${google_service_account.push.email}"


def test_dataflow_identities_have_least_privilege() -> None:
    cfg = load(MODULES / "dataflow")
    project_roles = {
        b["role"] for (k, _), b in cfg.resources.items() if k == "google_project_iam_member"
    }
    assert project_roles == {"roles/dataflow.worker", "roles/dataflow.developer"}
    reader = [
        b
        for (k, _), b in cfg.resources.items()
        if k == "google_artifact_registry_repository_iam_member"
    ]
    assert [b["role"] for b in reader] == ["roles/artifactregistry.reader"]
    act_as = [b for (k, _), b in cfg.resources.items() if k == "google_service_account_iam_member"]
    assert act_as
    for grant in act_as:
        assert "google_service_account.worker" in grant["service_account_id"]
    repo = cfg.resources["google_artifact_registry_repository", "images"]
    assert {p["action"] for p in repo["cleanup_policies"]} == {"KEEP", "DELETE"}
    assert cfg.variables["public_ips"]["default"] is False, "private worker IPs by default"


def test_checkov_skips_say_why() -> None:
    skips = []
    for path in tf_files():
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                m = re.search(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):\s*(.+)", line)
                assert m, f"{path}: malformed suppression {line.strip()!r}"
                assert len(m.group(2)) > 40, f"{path}: {m.group(1)} needs a reason"
                skips.append(m.group(1))
    assert skips, "expected the documented suppressions"


def test_checkov_finds_nothing() -> None:
    if not CHECKOV.exists():
        unavailable("checkov", "it runs in its own virtualenv: `make checkov` builds .venv-checkov")
    done = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(TERRAFORM),
            "--framework",
            "terraform",
            "--compact",
            "--quiet",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    assert summary["failed"] == 0, done.stdout[-4000:]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 30


# =========================================================================== the code's names


def test_the_trigger_runs_the_cli_serve_command() -> None:
    cfg = load(MODULES / "trigger")
    assert cfg.locals["command"] == ["hyperbatch"]
    args = re.findall(r'"([^"]+)"', cfg.locals["args"])
    assert args[:2] == ["trigger", "serve"], args
    serve = cli_command("trigger", "serve")
    for flag in (a for a in args if a.startswith("--")):
        cli_option(serve, flag)
    container = first_block(
        first_block(cfg.resources["google_cloud_run_v2_service", "trigger"], "template"),
        "containers",
    )
    port = first_block(container, "ports")["container_port"]
    assert port == cli_option(serve, "--port").default, "container port = the CLI's default PORT"
    docker = (REPO / "docker" / "trigger" / "Dockerfile").read_text()
    assert 'CMD ["hyperbatch", "trigger", "serve"' in docker


def _envvars_in_terraform() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in [*tf_files(), *TERRAFORM.rglob("*.md")]:
        for name in re.findall(r"\bHYPERBATCH_[A-Z_]*[A-Z]\b", path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(TERRAFORM)))
    return found


def test_environment_variables_are_the_cli_s() -> None:
    used = _envvars_in_terraform()
    assert len(used) > 15, sorted(used)
    known = cli_envvars() | {"HYPERBATCH_DATAFLOW_API_ENDPOINT"}  # read with os.environ
    unknown = {n: sorted(w) for n, w in used.items() if n not in known}
    assert unknown == {}, "Terraform sets variables the CLI does not read"
    trigger_env = load(MODULES / "trigger").locals["env"]
    serve = cli_envvars(cli_command("trigger", "serve"))
    for name in re.findall(r"\b([A-Z][A-Z_]+[A-Z]) *=", trigger_env):
        if name.startswith("HYPERBATCH_"):
            assert name in serve, f"`trigger serve` does not read {name}"
        else:
            assert any(name in p.read_text() for p in python_sources()), f"nothing reads {name}"
    for required in (
        "HYPERBATCH_JOBS_ROOT",
        "HYPERBATCH_RUNNER",
        "HYPERBATCH_PUSH_AUDIENCE",
        "HYPERBATCH_PUSH_SERVICE_ACCOUNTS",
        "HYPERBATCH_EVENTS_TOPIC",
        "HYPERBATCH_DEAD_LETTER_TOPIC",
        "HYPERBATCH_WATCH",
    ):
        assert required in trigger_env, f"the trigger service does not set {required}"


def test_the_confinement_terraform_sets_is_read_by_the_triggers() -> None:
    for command in ("serve", "listen"):
        assert "HYPERBATCH_ALLOW" in cli_envvars(cli_command("trigger", command))
    assert "HYPERBATCH_ALLOW" in load(MODULES / "trigger").locals["env"]


def test_dataflow_module_sets_every_dataflow_setting_of_the_cli() -> None:
    cli = {n for n in cli_envvars(cli_command("submit")) if n.startswith("HYPERBATCH_DATAFLOW_")}
    assert len(cli) >= 10, cli
    module = set(
        re.findall(
            r"\b(HYPERBATCH_DATAFLOW_[A-Z_]+)\s*=",
            str(load(MODULES / "dataflow").locals["cli_env"]),
        )
    )
    assert module == cli
    public_ips = cli_option(cli_command("submit"), "--public-ips")
    for text, value in (("true", True), ("false", False)):
        assert public_ips.type.convert(text, public_ips, None) is value


def test_root_outputs_what_the_cli_needs_in_one_line() -> None:
    cfg = load(TERRAFORM)
    env = str(cfg.locals["cli_env"])
    for name in (
        "HYPERBATCH_JOBS_ROOT",
        "HYPERBATCH_RUNNER",
        "HYPERBATCH_EVENTS_TOPIC",
        "HYPERBATCH_DEAD_LETTER_TOPIC",
        "HYPERBATCH_SUBSCRIPTION",
        "HYPERBATCH_WATCH",
        "GOOGLE_CLOUD_PROJECT",
    ):
        assert name in env, name
    assert "module.dataflow.cli_env" in env
    runner = cli_option(cli_command("submit"), "--runner")
    assert 'HYPERBATCH_RUNNER = "dataflow"' in env.replace('"HYPERBATCH_RUNNER"', "")
    assert "dataflow" in runner.type.choices
    assert "export ${k}=" in cfg.outputs["cli_env"]["value"]
    readme = (TERRAFORM / "README.md").read_text()
    assert 'eval "$(terraform output -raw cli_env)"' in readme


def test_flex_template_is_built_from_the_metadata_file() -> None:
    cfg = load(MODULES / "dataflow")
    default = re.search(
        r'"\$\{path\.module\}/([^"]+metadata\.json)"', cfg.locals["template_metadata_file"]
    )
    assert default, "the dataflow module must default to docker/flex-template/metadata.json"
    assert (MODULES / "dataflow" / default.group(1)).resolve() == METADATA
    content = cfg.resources["google_storage_bucket_object", "template"]["content"]
    assert "jsondecode(file(local.template_metadata_file))" in content
    params = template_parameters()
    assert {"hyperbatch_root", "hyperbatch_job_id", "hyperbatch_events_topic"} <= params
    for path in [*tf_files(), *TERRAFORM.rglob("*.md")]:
        for name in re.findall(r"\b(hyperbatch_[a-z_]+)=", path.read_text()):
            assert name in params, f"{path}: {name} is not a Flex Template parameter"


def test_request_schema_is_read_from_the_avsc_file_not_copied() -> None:
    cfg = load(MODULES / "pubsub")
    default = re.search(
        r'"\$\{path\.module\}/([^"]+\.avsc)"', cfg.locals["job_request_schema_file"]
    )
    assert default, "the pubsub module must default to schemas/job_request.avsc"
    assert (MODULES / "pubsub" / default.group(1)).resolve() == JOB_REQUEST_SCHEMA
    schema = cfg.resources["google_pubsub_schema", "job_request"]
    assert schema["type"] == "AVRO"
    assert schema["definition"] == "${file(local.job_request_schema_file)}"
    assert not list(TERRAFORM.rglob("*.avsc"))
    namespace = json.loads(JOB_REQUEST_SCHEMA.read_text())["namespace"]
    for path in tf_files():
        assert namespace not in path.read_text(), f"{path} copies the schema"


def test_accelerators_and_worker_shapes_are_the_code_s() -> None:
    cfg = load(MODULES / "dataflow")
    code = code_worker_shapes()
    condition = cfg.variables["accelerator"]["validation"][0]["condition"]
    assert set(re.findall(r'"([a-z0-9-]+)"', condition)) == {a for a, _ in code}
    terraform = {("cpu", 1): (cfg.locals["cpu_machine_type"], None)}
    for name, tpu in cfg.locals["tpu_slices"].items():
        for count, s in tpu["slices"].items():
            terraform[name, int(count)] = (
                s["machine_type"],
                f"type:{tpu['type']};topology:{s['topology']}",
            )
    for name, gpu in cfg.locals["gpu_machines"].items():
        for count, machine in gpu["machines"].items():
            terraform[name, int(count)] = (
                machine,
                f"type:{gpu['type']};count:{count};install-nvidia-driver",
            )
    assert terraform == code
    counts = set(
        re.findall(r"\d+", cfg.variables["accelerator_count"]["validation"][0]["condition"])
    )
    assert {str(c) for _, c in code} <= counts


# =========================================================================== evaluated HCL


def _console(files: list[Path], variables: dict[str, Any], expression: str, tmp: Path) -> Any:
    """Evaluate an expression over provider-free .tf files with `terraform console`."""
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("no terraform binary: the HCL evaluation is skipped (the parse checks ran)")
    for f in files:
        shutil.copy(f, tmp / f.name)
    declared = "\n".join(f'variable "{k}" {{\n  default = null\n}}' for k in variables)
    (tmp / "variables_for_test.tf").write_text(declared)
    values = {k: v for k, v in variables.items() if v is not None}
    (tmp / "test.auto.tfvars.json").write_text(json.dumps(values))
    done = subprocess.run(
        [terraform, "console"],
        input=f"jsonencode({expression})\n",
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(json.loads(done.stdout.strip().splitlines()[-1]))


def test_worker_shapes_evaluate_like_the_launcher(tmp_path: Path) -> None:
    code = code_worker_shapes()
    shapes = MODULES / "dataflow" / "shapes.tf"
    cases = {**{k: v for k, v in code.items()}, ("nvidia-h200-141gb", 1): None, ("cpu", 4): None}
    for (accelerator, count), expected in cases.items():
        work = tmp_path / f"{accelerator}-{count}"
        work.mkdir()
        got = _console(
            [shapes],
            {"accelerator": accelerator, "accelerator_count": count},
            "[local.worker_shape, local.worker_shape_exists]",
            work,
        )
        shape, exists = got
        if expected is None:
            assert exists is False, f"{accelerator} x{count} should not exist"
        else:
            assert exists is True
            assert (shape["machine_type"], shape["worker_accelerator"]) == expected


def test_scheduled_pipeline_publishes_a_job_request(tmp_path: Path) -> None:
    fastavro = require("fastavro", "decodes the JobRequest the scheduler publishes")
    request = MODULES / "pipeline" / "request.tf"
    schema = json.loads(JOB_REQUEST_SCHEMA.read_text())
    fields = {f["name"] for f in schema["fields"]}
    base = {
        "name": "nightly",
        "spec": "name: nightly\ntask: chat\n",
        "max_cost_usd": 12.5,
        "default_max_cost_usd": None,
        "spec_bucket": "jobs-bucket",
        "spec_prefix": "pipelines",
        "watch_prefix": None,
        "submitted_by": None,
        "request_encoding": None,
    }
    expression = (
        "[local.request_body, local.request_attributes, local.spec_document, local.spec_url]"
    )

    (tmp_path / "plain").mkdir()
    body, attributes, spec, url = _console([request], base, expression, tmp_path / "plain")
    plain = json.loads(body)
    assert url == "gs://jobs-bucket/pipelines/nightly.json"
    assert plain == {"spec_url": url, "submitted_by": "cloud-scheduler/nightly"}
    assert set(plain) <= fields
    assert "job_id" not in plain
    assert "job_id" not in attributes
    assert spec == {"name": "nightly", "task": "chat", "max_cost_usd": 12.5}
    assert set(attributes) - {"hyperbatch_pipeline"} <= fields

    (tmp_path / "avro").mkdir()
    body, *_ = _console(
        [request], {**base, "request_encoding": "JSON"}, expression, tmp_path / "avro"
    )
    (decoded,) = list(fastavro.json_reader(io.StringIO(body), schema))
    assert decoded["spec_url"] == url
    assert decoded["job_id"] is None
    assert decoded["submitted_by"] == "cloud-scheduler/nightly"

    (tmp_path / "watch").mkdir()
    *_, url = _console(
        [request],
        {**base, "watch_prefix": "gs://jobs-bucket/specs/"},
        expression,
        tmp_path / "watch",
    )
    assert url == "gs://jobs-bucket/specs/nightly.json"


def test_pipeline_budget_cap_default_spec_and_override(tmp_path: Path) -> None:
    request = MODULES / "pipeline" / "request.tf"
    base = {"name": "nightly", "spec_bucket": "jobs-bucket", "spec_prefix": "pipelines",
            "watch_prefix": None, "submitted_by": None, "request_encoding": None}  # fmt: skip
    cases = [  # (spec, default_max_cost_usd, max_cost_usd) -> the published cap
        ("name: n\n", 5, None, 5),  # the default, where the spec has none
        ("name: n\nmax_cost_usd: 2\n", 5, None, 2),  # the spec's own wins over the default
        ("name: n\nmax_cost_usd: 2\n", 5, 9, 9),  # max_cost_usd wins over both
        ("name: n\n", None, None, None),  # no cap anywhere: none
    ]
    for i, (spec, default, cap, expected) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        variables = {**base, "spec": spec, "default_max_cost_usd": default, "max_cost_usd": cap}
        document = _console([request], variables, "local.spec_document", tmp_path / str(i))
        assert document.get("max_cost_usd") == expected, (spec, default, cap, document)


# =========================================================================== docs


@pytest.mark.parametrize("module", MODULE_NAMES)
def test_module_readme_has_usage_and_tables(module: str) -> None:
    cfg = load(MODULES / module)
    readme = (MODULES / module / "README.md").read_text()
    usage = re.search(r"```hcl\n(.*?)```", readme, re.S)
    assert usage, f"modules/{module}/README.md has no ```hcl usage block"
    assert 'source = "' in usage.group(1)
    assert "module " in usage.group(1)
    assert "## Inputs" in readme
    assert "## Outputs" in readme
    for name in cfg.variables:
        assert f"| `{name}` |" in readme, f"modules/{module}/README.md: input {name} missing"
    for name in cfg.outputs:
        assert f"| `{name}` |" in readme, f"modules/{module}/README.md: output {name} missing"
    tables = readme[readme.index("## Inputs") :]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", tables, re.M))
    assert documented <= set(cfg.variables) | set(cfg.outputs), "README documents stale names"


def test_deploy_guide_goes_from_an_empty_project_to_a_first_job() -> None:
    readme = (TERRAFORM / "README.md").read_text()
    assert "# Deploy on Google Cloud" in readme
    for api in load(TERRAFORM).locals["apis"].strip("${}").split('"')[1::2]:
        assert api in readme, f"the guide does not enable {api}"
    for needed in (
        "terraform apply",
        "docker build",
        "docker/README.md",
        "docker push",
        "gcloud pubsub topics publish",
        "hyperbatch submit",
        "gcloud storage cp",
        "flex-template",
        "idle",
        "scale",
    ):
        assert needed in readme, f"the guide does not mention {needed!r}"
