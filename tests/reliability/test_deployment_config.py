"""The deployment files hold together: the compose file validates and has the intended topology and
isolation, every variable it reads is documented, its defaults match the service's, its shell snippets
run, the Dockerfile is ordered and hardened as intended, and the image would not miss a dependency.

No Docker engine runs here: the compose file is checked with the ``docker compose`` plugin or
``docker-compose`` when one is installed (the test skips, naming the reason, otherwise), and
structurally with PyYAML always.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from benchmarks.reliability.harness import child_env
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
STACK = ROOT / "scripts" / "stack.sh"
PACKAGES = ("cli", "model", "service", "training")
VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(?::?([-?+])([^}]*))?\}")
"""``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` (``$${...}`` is escaped: the container's shell)."""
CELLTYPE_CONTAINERS = ("trainer", "celltype", "scorer")
SECRETS = re.compile(r"^(AWS_|MINIO_|POSTGRES_PASSWORD|MLFLOW_S3_SECRET)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as parsed YAML (variables not interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    """``.env.example`` as a dict."""
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def compose_defaults() -> dict[str, str]:
    """``NAME -> default`` of every ``${NAME:-default}`` in the compose file."""
    return {m[0]: m[2] for m in VARIABLE.findall(COMPOSE.read_text()) if m[1] == "-"}


def compose_cli() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose``, whichever works here; ``None`` if neither."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


def test_the_compose_file_validates_with_the_compose_cli() -> None:
    """``config -q`` accepts the file with the variables of .env.example, with and without the scoring profile."""
    command = compose_cli()
    if command is None:
        pytest.skip(
            "neither the `docker compose` plugin nor `docker-compose` is installed; checked structurally only"
        )
    for profile in ([], ["--profile", "scoring"]):
        result = subprocess.run(
            [*command, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def test_the_topology_and_its_start_order(compose: dict[str, Any]) -> None:
    """PostgreSQL and MinIO (plus the bucket one-shot) -> MLflow -> trainer -> service; scoring is a profile."""
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow", "trainer", "celltype", "scorer"}
    conditions = {
        name: {dep: spec["condition"] for dep, spec in s.get("depends_on", {}).items()}
        for name, s in services.items()
    }
    assert conditions["minio-init"] == {"minio": "service_healthy"}
    assert conditions["mlflow"] == {
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    assert conditions["trainer"] == {"mlflow": "service_healthy"}
    assert conditions["celltype"] == {
        "mlflow": "service_healthy",
        "trainer": "service_completed_successfully",
    }
    assert conditions["scorer"] == {"mlflow": "service_healthy"}
    for name in ("postgres", "minio", "mlflow", "celltype"):
        assert services[name]["healthcheck"]["test"], name
    assert "/health/ready" in " ".join(services["celltype"]["healthcheck"]["test"])
    assert services["scorer"]["profiles"] == ["scoring"]
    assert all(services[name]["restart"] == "no" for name in ("minio-init", "trainer", "scorer"))


def test_only_mlflow_holds_storage_credentials_and_artifacts_are_proxied(compose: dict[str, Any]) -> None:
    """The celltype containers get no S3 or database secret and no route to the storage network; MLflow
    serves artifacts from S3 itself, on PostgreSQL, with the CVE-2025-11201 source regex set."""
    services = compose["services"]
    for name in CELLTYPE_CONTAINERS:
        leaked = [key for key in services[name].get("environment", {}) if SECRETS.match(key)]
        assert leaked == [], f"{name} gets {leaked}"
        assert services[name]["networks"] == ["registry"]
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    mlflow = services["mlflow"]
    command = " ".join(map(str, mlflow["command"]))
    assert "--backend-store-uri postgresql+psycopg2://" in command
    assert "--artifacts-destination s3://" in command
    assert "--serve-artifacts" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["environment"]["MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX"]
    assert compose["networks"]["storage"]["internal"] is True
    assert set(services["postgres"]["networks"]) == set(services["minio"]["networks"]) == {"storage"}
    assert (
        services["celltype"]["environment"]["CELLTYPE_MODEL_URI"]
        == "models:/${MODEL_NAME:-celltype-demo}@champion"
    )


def test_published_ports_are_loopback_by_default_and_containers_are_hardened(compose: dict[str, Any]) -> None:
    """Host ports bind to 127.0.0.1 unless .env says otherwise; celltype containers drop capabilities."""
    defaults = compose_defaults()
    for service in compose["services"].values():
        for port in service.get("ports", []):
            address = VARIABLE.match(port)
            assert address is not None and defaults[address.group(1)] == "127.0.0.1", port
    for name in CELLTYPE_CONTAINERS:
        service = compose["services"][name]
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], name
    assert compose["services"]["celltype"]["read_only"] is True


def test_every_variable_the_compose_file_reads_is_documented_in_env_example() -> None:
    """Each ``${NAME}`` of docker-compose.yml has a line in .env.example, and .env.example has nothing else."""
    used = {m[0] for m in VARIABLE.findall(COMPOSE.read_text())}
    documented = set(env_example())

    assert sorted(used - documented) == []
    assert sorted(documented - used - {"COMPOSE_PROJECT_NAME"}) == []


def test_compose_defaults_match_env_example_and_the_service_settings() -> None:
    """Where the compose file has a default, .env.example suggests the same value (secrets aside), and each
    ``CELLTYPE_*`` default equals the service's own (``service.settings.Settings``)."""
    defaults, example = compose_defaults(), env_example()
    differing = {
        k: (v, example[k]) for k, v in defaults.items() if example[k] != v and k != "CELLTYPE_API_KEY"
    }
    assert differing == {}
    settings = Settings()
    chosen_here = {"CELLTYPE_MAX_CONCURRENCY", "CELLTYPE_API_KEY"}
    for key, value in defaults.items():
        field = key.removeprefix("CELLTYPE_").lower()
        if key.startswith("CELLTYPE_") and key not in chosen_here and hasattr(settings, field):
            expected = getattr(settings, field)
            assert (type(expected)(value) if isinstance(expected, (int, float)) else value) == expected, key


def test_the_shell_snippets_of_the_compose_file_are_valid_sh(compose: dict[str, Any]) -> None:
    """The trainer, scorer and bucket scripts parse with ``sh -n`` once compose has unescaped ``$$``."""
    scripts = {
        name: s["command"][0]
        for name, s in compose["services"].items()
        if s.get("entrypoint") == ["/bin/sh", "-ec"]
    }
    assert set(scripts) == {"minio-init", "trainer", "scorer"}
    for name, script in scripts.items():
        checked = subprocess.run(
            ["sh", "-n", "-c", script.replace("$$", "$")], capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into build stages."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_dockerfile_caches_dependencies_and_runs_hardened() -> None:
    """Slim Python 3.11; CPU torch from the PyTorch index before the other dependencies (a requirements
    file derived from pyproject.toml in a stage of its own), which come before the source; the final stage runs as a non-root user with a readiness health check,
    ``ENTRYPOINT ["celltype"]`` and ``CMD ["serve"]``."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    stages = dockerfile_stages()
    builder = next(stage for stage in stages if stage[0].endswith(" AS builder"))
    runtime = stages[-1]
    order = [i for i, line in enumerate(builder) if 'pip install "torch==' in line]
    requirements = [i for i, line in enumerate(builder) if line.startswith("RUN pip install -r")]
    sources = [i for i, line in enumerate(builder) if re.match(r"COPY (cli|model|training|service) ", line)]
    assert order and requirements and sources and max(order) < min(requirements) < min(sources)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in builder
    assert runtime[0].endswith(" AS runtime")
    user = [line for line in runtime if line.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") and "/health/ready" in line for line in runtime)
    assert 'ENTRYPOINT ["celltype"]' in runtime and 'CMD ["serve"]' in runtime
    assert not any("curl" in line or "apt-get" in line for line in runtime)


def test_the_build_context_is_an_allow_list_covering_every_copy() -> None:
    """.dockerignore starts by excluding everything; every ``COPY`` source of the Dockerfile is let back in."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        line.split()[1]
        for stage in dockerfile_stages()
        for line in stage
        if line.startswith("COPY ") and "--from" not in line
    }
    assert copied <= allowed, copied - allowed
    assert not (allowed & {".env", ".git", ".venv", "tests"})


def declared_closure() -> set[str]:
    """Canonical names of the project's runtime dependencies and everything they require, as installed."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [(Requirement(spec), "") for spec in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for spec in requires:
            child = Requirement(spec)
            for wanted in {"", *requirement.extras}:
                pending.append((child, wanted))
    return seen


def test_every_imported_distribution_is_a_declared_dependency() -> None:
    """A module the shipped packages import must come from pyproject's dependencies (or what they
    require): the image installs exactly those, so anything else would be missing there."""
    imported: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for match in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
                imported.add(match.group(1))
    third_party = imported - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}
    owners = importlib.metadata.packages_distributions()
    closure = declared_closure()
    undeclared = {
        module: sorted(canonicalize_name(d) for d in owners[module])
        for module in sorted(third_party)
        if module in owners and not any(canonicalize_name(d) in closure for d in owners[module])
    }
    assert undeclared == {}, (
        f"imported but not declared in pyproject.toml [project.dependencies]: {undeclared}"
    )


def test_the_stack_script_is_valid_bash() -> None:
    """``bash -n`` (and shellcheck, where installed) accept scripts/stack.sh; it explains its usage."""
    assert subprocess.run(["bash", "-n", str(STACK)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(STACK), "help"], capture_output=True, text=True, env=child_env())
    assert usage.returncode == 2 and "up|down|status|env" in usage.stderr
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(STACK)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout
