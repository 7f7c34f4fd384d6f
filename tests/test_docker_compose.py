"""docker-compose.yaml, Dockerfile and .env.example: schema-valid and internally consistent.

No Docker engine runs here, so the stack is checked statically: the file against the Compose
Specification schema (the project's copy in tests/fixtures), every reference resolves
(services, volumes, networks, bind mounts, ${VARS} in .env.example, service URLs), secrets
only from .env with no default values, ports on loopback, Spark workers scalable, the GPU
service only in the gpu profile, and the image built from the official Airflow image of the
pinned version with requirements.lock. Each check is a function returning the problems it
finds; the last tests feed each one a broken copy, so none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
COMPOSE = PROJECT / "docker-compose.yaml"
SCHEMA = PROJECT / "tests" / "fixtures" / "compose-spec.json"
ENV_EXAMPLE = PROJECT / ".env.example"
DOCKERFILE = PROJECT / "Dockerfile"

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOOPBACK = "127.0.0.1"
# Variable names that hold credentials: never a default value, never a literal.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CONNECTION_STRING|(^|_)SAS(_|$)|(^|_)KEY(_|$)")
# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x},
# ${NAME?x}, ${NAME:+x}, ${NAME+x}, or $NAME.
INTERPOLATION = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# user:password@ in a URL.
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:(?P<password>\$\{[^}]*\}|[^@\s/]+)@")
# A URL's host and port, where the host may be a service name.
SERVICE_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://(?:[^/\s@]+@)?(?P<host>[A-Za-z0-9_.-]+)"
                         r"(?::(?P<port>\d+))?")


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def example() -> str:
    return ENV_EXAMPLE.read_text()


# ---- helpers ---------------------------------------------------------------------------


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever syntax it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def argv_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def arg_after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def strings_in(node: Any) -> list[str]:
    """Every string value (and mapping key) anywhere in a YAML tree."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings_in(v)]]
    if isinstance(node, list):
        return [s for item in node for s in strings_in(item)]
    return [node] if isinstance(node, str) else []


def references(doc: dict[str, Any]) -> list[re.Match[str]]:
    """The ${VAR} references in a compose file's values (not $$ escapes, not comments)."""
    return [m for s in strings_in(doc) for m in INTERPOLATION.finditer(s) if m.group(0) != "$$"]


def example_values(example: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", example, re.MULTILINE))


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items()
            if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in env_of(s)}


def spark_services(compose: dict[str, Any], main_class: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if main_class in argv_of(s)}


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = (service.get("deploy", {}).get("resources", {}).get("reservations", {})
               .get("devices", []))
    return bool(service.get("gpus")) or any("gpu" in d.get("capabilities", []) for d in devices)


# ---- checks: each returns the problems it finds -----------------------------------------


def schema_problems(compose: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator_cls(schema).iter_errors(compose)]


def reference_problems(compose: dict[str, Any]) -> list[str]:
    """depends_on, named volumes, networks and bind mounts all resolve; nothing declared
    is unused; a service that always starts never needs one that only a profile starts."""
    problems = []
    services = compose["services"]
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {}) | {"default"}
    used_volumes: set[str] = set()
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            if dependency not in services:
                problems.append(f"{name} depends on unknown service {dependency}")
            elif services[dependency].get("profiles") and not service.get("profiles"):
                problems.append(f"{name} (no profile) depends on {dependency}, which only "
                                f"starts with profile(s) {services[dependency]['profiles']}")
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                kind, source = volume.get("type", "volume"), volume.get("source", "")
            else:
                source = volume.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                if not (PROJECT / source).exists():
                    problems.append(f"{name} bind-mounts missing {source}")
            elif kind == "volume" and source:
                used_volumes.add(source)
                if source not in volumes:
                    problems.append(f"{name} uses undeclared volume {source}")
        for network in service.get("networks") or {}:
            if network not in networks:
                problems.append(f"{name} uses undeclared network {network}")
    problems += [f"volume {v} is declared but unused" for v in sorted(volumes - used_volumes)]
    return problems


def variable_problems(compose: dict[str, Any], example: str) -> list[str]:
    """Every ${VAR} is in .env.example and every variable there is used; secrets have no
    defaults (required ones use :?, optional ones an empty :-) and no value in the example."""
    problems = []
    used = set()
    for ref in {r.group(0): r for r in references(compose)}.values():  # each distinct once
        name = ref.group("name") or ref.group("bare")
        used.add(name)
        if not SECRET_NAME.search(name):
            continue
        op, arg = ref.group("op"), ref.group("arg")
        if op in (":?", "?"):
            if not arg.strip():
                problems.append(f"{ref.group(0)}: say what to set when it is missing")
        elif op in (":-", "-"):
            if arg:
                problems.append(f"{ref.group(0)}: a secret with a default value")
        else:
            problems.append(f"{ref.group(0)}: a secret needs ${{{name}:?message}} (required) "
                            f"or ${{{name}:-}} (optional)")
    documented = example_values(example)
    problems += [f"{v} is used but not in .env.example" for v in sorted(used - set(documented))]
    problems += [f"{v} is in .env.example but unused" for v in sorted(set(documented) - used)]
    problems += [f".env.example gives secret {k} a value" for k, v in documented.items()
                 if SECRET_NAME.search(k) and v.strip()]
    return problems


def literal_secret_problems(compose: dict[str, Any]) -> list[str]:
    """Secret settings and URL passwords come from one ${VAR} each, never from a literal."""
    problems = []
    whole_reference = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}")
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if SECRET_NAME.search(key) and not whole_reference.fullmatch(value):
                problems.append(f"{name}: {key} is not a single ${{VAR}} reference")
    for string in strings_in(compose):
        for match in URL_CREDENTIALS.finditer(string):
            if not whole_reference.fullmatch(match.group("password")):
                problems.append(f"a URL carries a literal password: {string!r}")
    return problems


def port_problems(compose: dict[str, Any]) -> list[str]:
    """Every published port is bound to loopback (a bare port would bind every interface)."""
    problems = []
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            if host_ip != LOOPBACK:
                problems.append(f"{name} publishes {port} beyond {LOOPBACK}")
    return problems


def url_problems(compose: dict[str, Any]) -> list[str]:
    """Hosts in settings (URLs, connections) are services of the stack, or loopback."""
    services = compose["services"]
    hosts = set(services) | {s["hostname"] for s in services.values() if "hostname" in s}
    hosts |= {"localhost", LOOPBACK, "0.0.0.0"}
    problems = []
    for name, service in services.items():
        for key, value in env_of(service).items():
            plain = INTERPOLATION.sub("X", value)  # ${VAR} may hold spaces (messages)
            found = [m.group("host") for m in SERVICE_URL.finditer(plain)]
            if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
                conn = json.loads(value)
                found.append(urlsplit(conn["host"]).hostname if "://" in conn.get("host", "")
                             else conn.get("host"))
            problems += [f"{name}: {key} names unknown host {h}" for h in found
                         if h and h not in hosts]
    return problems


def spark_problems(compose: dict[str, Any]) -> list[str]:
    """One master; workers scalable, pointed at it, set up like the Airflow drivers; the
    Airflow Spark connection names the same master."""
    problems = []
    masters = spark_services(compose, MASTER_CLASS)
    workers = spark_services(compose, WORKER_CLASS)
    airflow = airflow_services(compose)
    if len(masters) != 1 or not workers:
        return [f"want one Spark master and workers, found {sorted(masters)}, {sorted(workers)}"]
    master_name, master = next(iter(masters.items()))
    master_argv = argv_of(master)
    master_host = arg_after(master_argv, "--host")
    master_url = f"spark://{master_host}:{arg_after(master_argv, '--port')}"
    if master_host not in (master_name, master.get("hostname")):
        problems.append(f"master listens as {master_host}, not as its service name")
    image = compose["services"][next(iter(airflow))].get("image") if airflow else None
    drivers_python = {env_of(s).get("PYSPARK_PYTHON") for s in airflow.values()}
    for name, worker in workers.items():
        for key in ("container_name", "hostname", "ports"):
            if worker.get(key):
                problems.append(f"{name} sets {key}: it could not be scaled")
        argv = argv_of(worker)
        if argv[-1] != master_url:
            problems.append(f"{name} joins {argv[-1]}, the master is {master_url}")
        env = env_of(worker)
        if env.get("OMP_NUM_THREADS") != "1":
            problems.append(f"{name}: OMP_NUM_THREADS must be 1 (one thread per Python worker)")
        if {env.get("PYSPARK_PYTHON")} != drivers_python:
            problems.append(f"{name}: PYSPARK_PYTHON differs from the Airflow drivers'")
        if worker.get("image") != image:
            problems.append(f"{name} runs {worker.get('image')}, the drivers run {image}")
        if master_name not in (worker.get("depends_on") or {}):
            problems.append(f"{name} does not wait for {master_name}")
    for name, service in airflow.items():
        conn = json.loads(env_of(service).get("AIRFLOW_CONN_SPARK_DEFAULT", "{}"))
        conn_url = f"{conn.get('host')}:{conn.get('port')}"
        if conn.get("conn_type") != "spark" or conn_url != master_url:
            problems.append(f"{name}: AIRFLOW_CONN_SPARK_DEFAULT names {conn_url}, "
                            f"the master is {master_url}")
    return problems


def mlflow_problems(compose: dict[str, Any]) -> list[str]:
    """Every Airflow component tracks to the stack's MLflow server."""
    servers = {name: s for name, s in compose["services"].items()
               if argv_of(s)[:2] == ["mlflow", "server"]}
    problems = [] if servers else ["no MLflow tracking server"]
    for name, service in airflow_services(compose).items():
        uri = urlsplit(env_of(service).get("MLFLOW_TRACKING_URI", ""))
        server = servers.get(uri.hostname or "")
        if server is None or arg_after(argv_of(server), "--port") != str(uri.port):
            problems.append(f"{name}: MLFLOW_TRACKING_URI {uri.geturl()!r} is not the server")
    return problems


def gpu_problems(compose: dict[str, Any]) -> list[str]:
    """GPUs are reserved only under the gpu profile, and the gpu profile reserves them."""
    problems = []
    in_profile = {n: s for n, s in compose["services"].items()
                  if "gpu" in (s.get("profiles") or [])}
    if not in_profile:
        problems.append("no service in the gpu profile")
    for name, service in compose["services"].items():
        if gpu_reserved(service) and name not in in_profile:
            problems.append(f"{name} reserves GPUs outside the gpu profile")
    for name, service in in_profile.items():
        devices = (service.get("deploy", {}).get("resources", {}).get("reservations", {})
                   .get("devices", []))
        if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                   for d in devices):
            problems.append(f"{name} is in the gpu profile without an nvidia gpu reservation")
    return problems


def pin(requirements: str, package: str) -> str | None:
    found = re.search(rf"^{re.escape(package)}==([^\s;#]+)", requirements,
                      re.MULTILINE | re.IGNORECASE)
    return found.group(1) if found else None


def dockerfile_problems(compose: dict[str, Any], dockerfile: str, requirements: str,
                        lock: str, python: str) -> list[str]:
    """The image: official Airflow of the pinned version and Python, plus the lock."""
    problems = []
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    base = stages[-1] if stages else None  # the last stage is the image; others build parts
    tag = re.fullmatch(r"apache/airflow:(?P<airflow>[0-9][^-]*)-python(?P<python>[0-9.]+)",
                       base or "")
    if not tag:
        return [f"base image {base} is not apache/airflow:X-pythonY"]
    for source, version in (("requirements.txt", pin(requirements, "apache-airflow")),
                            ("requirements.lock", pin(lock, "apache-airflow"))):
        if version != tag["airflow"]:
            problems.append(f"base image has Airflow {tag['airflow']}, {source} pins {version}")
    if tag["python"] != python:
        problems.append(f"base image has Python {tag['python']}, the project targets {python}")
    if not re.search(r"^COPY\b.*\brequirements\.lock\b", dockerfile, re.MULTILINE):
        problems.append("the image does not copy requirements.lock")
    if not re.search(r"^RUN\s+pip install\b[^\n]*(\\\n[^\n]*)*-r\s+\S*requirements\.lock",
                     dockerfile, re.MULTILINE):
        problems.append("the image does not pip install -r requirements.lock")
    built = {name: s for name, s in compose["services"].items() if "build" in s}
    for name, service in built.items():
        context = service["build"] if isinstance(service["build"], str) \
            else service["build"].get("context", ".")
        if context != ".":
            problems.append(f"{name} builds from {context}, not the project's Dockerfile")
    if len({s.get("image") for s in built.values()}) != 1:
        problems.append("services build the project image under different names")
    return problems


def project_python() -> str:
    requires = re.search(r'^requires-python\s*=\s*">=\s*([0-9.]+)"',
                         (PROJECT / "pyproject.toml").read_text(), re.MULTILINE)
    assert requires, "pyproject.toml has no requires-python lower bound"
    return requires.group(1)


def project_dockerfile_problems(compose: dict[str, Any],
                                dockerfile: str | None = None) -> list[str]:
    """:func:`dockerfile_problems` with the project's files (or another Dockerfile text)."""
    return dockerfile_problems(
        compose, DOCKERFILE.read_text() if dockerfile is None else dockerfile,
        (PROJECT / "requirements.txt").read_text(), (PROJECT / "requirements.lock").read_text(),
        project_python(),
    )


# ---- the real files ----------------------------------------------------------------------


def test_matches_compose_specification(compose):
    assert schema_problems(compose) == []


def test_references_resolve(compose):
    assert reference_problems(compose) == []


def test_variables_are_documented_and_secrets_have_no_defaults(compose, example):
    assert variable_problems(compose, example) == []


def test_no_literal_secrets(compose):
    assert literal_secret_problems(compose) == []


def test_ports_bound_to_loopback(compose):
    assert port_problems(compose) == []


def test_service_urls_resolve(compose):
    assert url_problems(compose) == []


def test_spark_cluster_is_scalable_and_wired(compose):
    assert spark_problems(compose) == []


def test_airflow_tracks_to_mlflow_server(compose):
    assert mlflow_problems(compose) == []


def test_gpu_only_under_gpu_profile(compose):
    assert gpu_problems(compose) == []


def test_image_is_official_airflow_of_the_pinned_version_with_the_lock(compose):
    assert project_dockerfile_problems(compose) == []


def test_no_admin_password_anywhere(text, example):
    # AIRFLOW_USERS is user:role; passwords are generated by Airflow, never configured here.
    for source in (text, example):
        assert not re.search(r"SIMPLE_AUTH_MANAGER_PASSWORDS|_AIRFLOW_WWW_USER_PASSWORD",
                             source)
    users = example_values(example)["AIRFLOW_USERS"]
    assert all(re.fullmatch(r"[\w.-]+:(admin|op|user|viewer)", u) for u in users.split(","))


# ---- each check catches what it is for -----------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets compose[path] (dotted; list indexes as numbers) to value."""
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[part]
        del node[last]
    return mutate


def _env(service: str, key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        env = dict(doc["services"][service].get("environment") or {})
        env[key] = value
        doc["services"][service]["environment"] = env
    return mutate


BROKEN: list[tuple[str, Callable[[dict[str, Any]], list[str]], Callable[..., None]]] = [
    ("unknown service key", schema_problems, _set("services.postgres.colour", "blue")),
    ("depends on a missing service", reference_problems,
     _set("services.airflow-apiserver.depends_on", {"redis": {"condition": "service_started"}})),
    ("depends on a gpu-only service", reference_problems,
     _set("services.airflow-triggerer.depends_on", {"airflow-scheduler-gpu": {}})),
    ("undeclared volume", reference_problems,
     _set("services.azurite.volumes", ["azurite-blobs:/data"])),
    ("missing bind mount", reference_problems,
     _set("services.spark-worker.volumes", ["./no-such-folder:/x"])),
    ("undeclared network", reference_problems, _set("services.mlflow.networks", ["backend"])),
    ("declared but unused volume", reference_problems, _set("volumes.spare", None)),
    ("literal password", literal_secret_problems, _env("postgres", "POSTGRES_PASSWORD", "airflow")),
    ("password in a URL", literal_secret_problems,
     _env("mlflow", "MLFLOW_BACKEND_STORE_URI", "postgresql://airflow:hunter2@postgres/mlflow")),
    ("port on every interface", port_problems, _set("services.mlflow.ports", ["5000:5000"])),
    ("bare port", port_problems, _set("services.azurite.ports", ["10000"])),
    ("long-syntax port off loopback", port_problems,
     _set("services.mlflow.ports", [{"target": 5000, "published": 5000, "host_ip": "0.0.0.0"}])),
    ("URL to an unknown host", url_problems, _env("airflow-scheduler", "MLFLOW_TRACKING_URI",
                                                  "http://tracking:5000")),
    ("worker with a container name", spark_problems,
     _set("services.spark-worker.container_name", "spark-worker")),
    ("worker with a host port", spark_problems,
     _set("services.spark-worker.ports", ["127.0.0.1:8082:8081"])),
    ("worker joins another master", spark_problems,
     _set("services.spark-worker.command", ["spark-class", WORKER_CLASS, "spark://master:7078"])),
    ("worker without OMP_NUM_THREADS=1", spark_problems,
     _env("spark-worker", "OMP_NUM_THREADS", "4")),
    ("worker with another Python", spark_problems,
     _env("spark-worker", "PYSPARK_PYTHON", "/usr/bin/python3")),
    ("Spark connection to another master", spark_problems,
     _env("airflow-scheduler", "AIRFLOW_CONN_SPARK_DEFAULT",
          '{"conn_type": "spark", "host": "spark://spark-master", "port": 7078}')),
    ("tracking URI off the server", mlflow_problems,
     _env("airflow-scheduler", "MLFLOW_TRACKING_URI", "http://mlflow:5001")),
    ("GPU outside the profile", gpu_problems, _delete("services.airflow-scheduler-gpu.profiles")),
    ("gpu profile without devices", gpu_problems, _delete("services.airflow-scheduler-gpu.deploy")),
    ("gpu reserved on another service", gpu_problems,
     _set("services.spark-worker.gpus", "all")),
    ("image built elsewhere", project_dockerfile_problems,
     _set("services.mlflow.build", "./other")),
]


@pytest.mark.parametrize("mutate_check", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_check_catches_a_broken_compose_file(compose, mutate_check):
    _, check, mutate = mutate_check
    broken = copy.deepcopy(compose)
    # Services share merged YAML anchors: give each its own objects before mutating one.
    broken["services"] = {n: copy.deepcopy(s) for n, s in broken["services"].items()}
    mutate(broken)
    assert check(broken), "the check passed a broken file"


@pytest.mark.parametrize("edit", [
    ("${AIRFLOW_FERNET_KEY:?", "${UNDOCUMENTED_VARIABLE:?"),   # not in .env.example
    ("${AIRFLOW_FERNET_KEY:?set AIRFLOW_FERNET_KEY in .env}", "${AIRFLOW_FERNET_KEY:-abc}"),
    ("${AIRFLOW_FERNET_KEY:?set AIRFLOW_FERNET_KEY in .env}", "${AIRFLOW_FERNET_KEY}"),
    ("${AIRFLOW_FERNET_KEY:?set AIRFLOW_FERNET_KEY in .env}", "${AIRFLOW_FERNET_KEY:?}"),
    ("${SPARK_WORKER_MEMORY:-2g}", "2g"),  # SPARK_WORKER_MEMORY left in the example, unused
])
def test_variable_check_catches_a_broken_compose_file(text, example, edit):
    old, new = edit
    assert old in text
    assert variable_problems(yaml.safe_load(text.replace(old, new)), example)


def test_variable_check_catches_a_secret_in_the_example(compose, example):
    assert "\nPOSTGRES_PASSWORD=\n" in example
    assert variable_problems(compose, example.replace("\nPOSTGRES_PASSWORD=\n",
                                                   "\nPOSTGRES_PASSWORD=airflow\n"))


@pytest.mark.parametrize("edit", [
    (r"apache/airflow:[^-\s]+", "apache/airflow:2.10.5"),          # another Airflow
    (r"-python[0-9.]+", "-python3.12"),                              # another Python
    (r"^FROM apache/.*$", "FROM python:3.11-slim"),                  # not the official image
    (r"-r /opt/landuse/requirements\.lock", "-r /opt/landuse/requirements.txt"),
    (r"^COPY .*requirements\.lock.*$", ""),
])
def test_dockerfile_check_catches_a_broken_dockerfile(compose, edit):
    pattern, new = edit
    dockerfile = DOCKERFILE.read_text()
    broken = re.sub(pattern, new, dockerfile, count=1, flags=re.MULTILINE)
    assert broken != dockerfile
    assert project_dockerfile_problems(compose, broken)
