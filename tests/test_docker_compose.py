"""docker-compose.yaml, Dockerfile and .env.example: schema-valid and internally consistent.

No Docker engine runs here, so the stack is checked statically: the file against the Compose
Specification schema (the project's copy in tests/fixtures), every reference resolves
(services, volumes, networks, bind mounts, ${VARS} in .env.example, service URLs), secrets
only from .env with no default values, ports on loopback, Spark workers scalable, the image
built from the official Airflow image of the pinned version with requirements.lock, and GPU
training wired end to end: GPUs reserved only in the gpu profile, by a Celery worker that
serves the gpu queue in an image with TensorFlow's CUDA build (Dockerfile.gpu), an executor
configuration that honours queues, a broker inside the stack, and the training DAG, parsed
with the gpu profile's settings, sending its training tasks there. Each check is a function
returning the problems it finds; the last tests feed each one a broken copy, so none of them
can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
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
DOCKERFILE_GPU = PROJECT / "Dockerfile.gpu"
LOCK = PROJECT / "requirements.lock"
TRAINING_DAG = PROJECT / "dags" / "landuse_training.py"

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
# What docs/operations.md has .env set for the gpu profile (the default leaves it empty).
GPU_PROFILE_SETTINGS = {"LANDUSE_GPU_EXECUTOR": "CeleryExecutor"}
# Variables that Compose itself reads from .env (not referenced in the file).
COMPOSE_SETTINGS = {"COMPOSE_PROJECT_NAME"}
# Executors that send a task to the workers serving its queue (LocalExecutor ignores queues),
# with their workers' command line.
QUEUE_EXECUTORS = {"CeleryExecutor": ["airflow", "celery", "worker"]}
# The training tasks: those in the pool that airflow-init creates for them.
TRAINING_POOL = "gpu"
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


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return (service.get("deploy", {}).get("resources", {}).get("reservations", {})
            .get("devices", []))


def gpu_reserved(service: dict[str, Any]) -> bool:
    return bool(service.get("gpus")) or any("gpu" in d.get("capabilities", [])
                                            for d in gpu_devices(service))


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """A compose value as compose resolves it with ``variables`` (.env) set."""
    def resolve(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg, current = m.group("op") or "", m.group("arg") or "", variables.get(name)
        if op in (":-", "-"):
            return arg if current is None or (op == ":-" and not current) else current
        if op in (":+", "+"):
            return "" if current is None or (op == ":+" and not current) else arg
        if current is None or (op == ":?" and not current):
            if op in (":?", "?"):
                raise ValueError(f"{name} is required: {arg}")
            return ""
        return current
    return INTERPOLATION.sub(resolve, value)


def executors_of(service: dict[str, Any]) -> list[str]:
    """[core] executor as a list (the first is the default)."""
    return [e.strip() for e in env_of(service).get("AIRFLOW__CORE__EXECUTOR", "").split(",")
            if e.strip()]


def queue_worker_executor(service: dict[str, Any]) -> str | None:
    """The queue-honouring executor whose worker the service runs, if any."""
    argv = argv_of(service)
    return next((e for e, cmd in QUEUE_EXECUTORS.items() if argv[:len(cmd)] == cmd), None)


def served_queues(service: dict[str, Any]) -> list[str]:
    queues = arg_after(argv_of(service), "--queues")
    return queues.split(",") if queues else ["default"]  # Airflow's [operators] default_queue


def gpu_queue(compose: dict[str, Any]) -> set[str]:
    """The queue(s) the Airflow components send the training tasks to."""
    return {env_of(s).get("LANDUSE_GPU_QUEUE", "default")
            for s in airflow_services(compose).values()}


def pool_slots(compose: dict[str, Any]) -> str | None:
    """How `airflow pools set` sizes the training pool (a value or a ${VAR} reference)."""
    for service in compose["services"].values():
        found = re.search(rf"\bairflow pools set {TRAINING_POOL} (\S+)",
                          " ".join(argv_of(service)))
        if found:
            return found.group(1)
    return None


def dockerfile_of(service: dict[str, Any]) -> str:
    build = service.get("build")
    return "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")


def dot_env(example: str, gpu: bool = False) -> dict[str, str]:
    """.env as the docs have it: the example with its secrets filled in, plus
    GPU_PROFILE_SETTINGS for the gpu profile."""
    values = {k: v or ("placeholder" if SECRET_NAME.search(k) else "")
              for k, v in example_values(example).items()}
    return {**values, **(GPU_PROFILE_SETTINGS if gpu else {})}


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
    unused = set(documented) - used - COMPOSE_SETTINGS
    problems += [f"{v} is in .env.example but unused" for v in sorted(unused)]
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
    """GPUs are reserved only under the gpu profile, by Airflow workers of a queue-honouring
    executor that serve the training queue alone, one task per slot of the training pool, in
    an image of their own (not the CPU one)."""
    problems = []
    services = compose["services"]
    in_profile = {n: s for n, s in services.items() if "gpu" in (s.get("profiles") or [])}
    workers = {n: s for n, s in in_profile.items() if gpu_reserved(s)}
    if not workers:
        problems.append("no service of the gpu profile reserves a GPU")
    for name, service in services.items():
        if gpu_reserved(service) and name not in in_profile:
            problems.append(f"{name} reserves GPUs outside the gpu profile")
    queues = gpu_queue(compose)
    project_images = {s.get("image") for s in services.values()
                      if "build" in s and dockerfile_of(s) == "Dockerfile"}
    for name, service in workers.items():
        if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                   for d in gpu_devices(service)):
            problems.append(f"{name} reserves GPUs without the nvidia driver")
        executor = queue_worker_executor(service)
        if executor is None or executor not in executors_of(service):
            problems.append(f"{name} is not a worker of a queue-honouring executor it "
                            f"configures: {argv_of(service)}")
        if len(queues) != 1 or served_queues(service) != sorted(queues):
            problems.append(f"{name} serves {served_queues(service)}, the training tasks go "
                            f"to {sorted(queues)} (and nothing else may reach the GPUs)")
        concurrency = arg_after(argv_of(service), "--concurrency")
        if concurrency is None or concurrency != pool_slots(compose):
            problems.append(f"{name} runs {concurrency} tasks at once, the {TRAINING_POOL} "
                            f"pool has {pool_slots(compose)} slots")
        if service.get("image") in project_images:
            problems.append(f"{name} runs the CPU image {service.get('image')}")
    return problems


def executor_problems(compose: dict[str, Any], example: str) -> list[str]:
    """One executor configuration everywhere that honours queues; with the gpu profile's
    settings the training executor is one of it; its broker lives inside the stack (no
    port on the host), healthy before a GPU worker starts."""
    problems = []
    airflow = airflow_services(compose)
    configs = {tuple(executors_of(s)) for s in airflow.values()}
    if len(configs) != 1:
        return [f"the Airflow components configure different executors: {sorted(configs)}"]
    executors = list(next(iter(configs)))
    if not set(executors) & set(QUEUE_EXECUTORS):
        problems.append(f"no executor in {executors} honours queues")
    for label, variables in (("by default", dot_env(example)),
                             ("with the gpu profile", dot_env(example, gpu=True))):
        chosen = {interpolate(env_of(s).get("LANDUSE_GPU_EXECUTOR", ""), variables)
                  for s in airflow.values()}
        for executor in chosen - {""}:
            if executor not in executors:
                problems.append(f"{label} the training executor {executor} is not one of "
                                f"{executors}: the DAG would not parse")
        if label != "by default" and not chosen & set(QUEUE_EXECUTORS):
            problems.append(f"{label} the training tasks use {sorted(chosen)}, which "
                            f"ignores queues")
    brokers = {env_of(s).get("AIRFLOW__CELERY__BROKER_URL") for s in airflow.values()}
    if "CeleryExecutor" in executors:
        if len(brokers) != 1 or None in brokers:
            return [*problems, f"the Airflow components use brokers {sorted(map(str, brokers))}"]
        host = urlsplit(INTERPOLATION.sub("X", next(iter(brokers)))).hostname or ""
        broker = compose["services"].get(host)
        if broker is None:
            return [*problems, f"the Celery broker {host} is not a service of the stack"]
        if broker.get("ports"):
            problems.append(f"the broker {host} publishes {broker['ports']}: nothing outside "
                            f"the stack needs it")
        if "healthcheck" not in broker:
            problems.append(f"the broker {host} has no healthcheck")
        for name, service in compose["services"].items():
            if queue_worker_executor(service) and (service.get("depends_on") or {}).get(
                    host, {}).get("condition") != "service_healthy":
                problems.append(f"{name} does not wait for a healthy {host}")
    return problems


def project_executor_problems(compose: dict[str, Any]) -> list[str]:
    return executor_problems(compose, ENV_EXAMPLE.read_text())


def routing_problems(compose: dict[str, Any], tasks: dict[str, dict[str, Any]]) -> list[str]:
    """The DAG's training tasks (those in the training pool), as parsed with the gpu
    profile's settings, go to a queue-honouring executor on a queue a GPU worker serves;
    no other task goes to a GPU worker."""
    gpu_queues = {q for s in compose["services"].values() if gpu_reserved(s)
                  for q in served_queues(s)}
    training = {t: v for t, v in tasks.items() if v["pool"] == TRAINING_POOL}
    problems = [] if training else [f"no task in the {TRAINING_POOL} pool"]
    for task_id, task in training.items():
        if task["executor"] not in QUEUE_EXECUTORS:
            problems.append(f"{task_id} runs on {task['executor'] or 'the default executor'}, "
                            f"which ignores queues")
        if task["queue"] not in gpu_queues:
            problems.append(f"{task_id} goes to queue {task['queue']}, GPU workers serve "
                            f"{sorted(gpu_queues)}")
    for task_id, task in tasks.items():
        if task_id not in training and task["executor"] in QUEUE_EXECUTORS \
                and task["queue"] in gpu_queues:
            problems.append(f"{task_id} is not a training task but goes to a GPU worker")
    return problems


def parsed_training_tasks(compose: dict[str, Any], example: str, home: Path
                          ) -> dict[str, dict[str, Any]]:
    """The training DAG's tasks, parsed (in a fresh interpreter, as the DAG processor does)
    with the scheduler's executor and routing settings, resolved with the gpu profile's .env.

    Raises:
        AssertionError: the DAG does not parse with those settings.
    """
    from airflow_home import airflow_settings

    env = env_of(compose["services"]["airflow-scheduler"])
    variables = dot_env(example, gpu=True)
    routing = {k: interpolate(env[k], variables)
               for k in ("AIRFLOW__CORE__EXECUTOR", "LANDUSE_GPU_QUEUE", "LANDUSE_GPU_EXECUTOR")
               if k in env}
    script = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "dag = bag.dags.get('landuse_training')\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "    'tasks': {t.task_id: {'queue': t.queue, 'executor': t.executor, 'pool': t.pool}\n"
        "              for t in (dag.tasks if dag else [])}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(TRAINING_DAG)], check=True,
                          capture_output=True, text=True,
                          env={**os.environ, **airflow_settings(home), **routing})
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not parsed["errors"], parsed["errors"]
    return parsed["tasks"]


def pin(requirements: str, package: str) -> str | None:
    found = re.search(rf"^{re.escape(package)}==([^\s;#]+)", requirements,
                      re.MULTILINE | re.IGNORECASE)
    return found.group(1) if found else None


def from_images(dockerfile: str) -> list[str]:
    """The image each stage starts FROM, ``${ARG}`` replaced by the default of the ARG
    declared before the first FROM (how a build without --build-arg resolves it)."""
    head = dockerfile.split("\nFROM", 1)[0]
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", head, re.MULTILINE))
    return [re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), image)
            for image in re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)]


def dockerfile_problems(compose: dict[str, Any], dockerfile: str, requirements: str,
                        lock: str, python: str) -> list[str]:
    """The image: official Airflow of the pinned version and Python, plus the lock."""
    problems = []
    stages = from_images(dockerfile)
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
    project = {s.get("image") for s in built.values() if dockerfile_of(s) == "Dockerfile"}
    if len(project) != 1:
        problems.append("services build the project image under different names")
    for name, service in built.items():
        if dockerfile_of(service) != "Dockerfile" and service.get("image") in project:
            problems.append(f"{name} builds {dockerfile_of(service)} under the project "
                            f"image's name {service.get('image')}")
    return problems


def gpu_dockerfile_problems(compose: dict[str, Any], dockerfile: str, lock: str) -> list[str]:
    """The GPU workers' image: the project image (built first: Compose 1.29 cannot order
    builds) with the CUDA build of the TensorFlow version the lock pins as tensorflow-cpu,
    which it replaces, every other package held to the lock."""
    problems = []
    services = compose["services"]
    workers = {n: s for n, s in services.items() if gpu_reserved(s)}
    stages = from_images(dockerfile)
    base = stages[-1] if stages else None
    project = {s.get("image") for s in services.values()
               if "build" in s and dockerfile_of(s) == "Dockerfile"}
    for name, service in workers.items():
        build = service.get("build")
        if not isinstance(build, dict) or build.get("dockerfile") != DOCKERFILE_GPU.name:
            problems.append(f"{name} is not built from {DOCKERFILE_GPU.name}")
            continue
        if base not in project:
            problems.append(f"{DOCKERFILE_GPU.name} starts FROM {base}, not the project image "
                            f"{sorted(map(str, project))}")
    tensorflow = pin(lock, "tensorflow_cpu") or pin(lock, "tensorflow-cpu")
    version = re.search(r"^ARG\s+TENSORFLOW_VERSION=(\S+)", dockerfile, re.MULTILINE)
    if not version or version.group(1) != tensorflow:
        problems.append(f"TENSORFLOW_VERSION is {version and version.group(1)}, the lock pins "
                        f"tensorflow-cpu {tensorflow}")
    run = " ".join(re.sub(r"\\\n", " ", dockerfile).split())
    if not re.search(r"pip uninstall -y tensorflow[-_]cpu\b", run):
        problems.append("the GPU image keeps tensorflow-cpu (same package folder)")
    if not re.search(r'pip install [^&]*"tensorflow\[and-cuda\]==\$\{TENSORFLOW_VERSION\}"'
                     r"[^&]* -c \S+", run):
        problems.append("the GPU image does not pip install tensorflow[and-cuda] at "
                        "TENSORFLOW_VERSION under the lock's constraints")
    if "tf.test.is_built_with_cuda()" not in run:
        problems.append("the GPU image's build does not check that TensorFlow has CUDA")
    return problems


def project_gpu_dockerfile_problems(compose: dict[str, Any],
                                    dockerfile: str | None = None) -> list[str]:
    return gpu_dockerfile_problems(
        compose, DOCKERFILE_GPU.read_text() if dockerfile is None else dockerfile,
        LOCK.read_text())


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


def test_executors_honour_queues_with_a_broker_inside_the_stack(compose, example):
    assert executor_problems(compose, example) == []


def test_the_broker_password_is_needed_only_where_the_broker_runs(compose, tmp_path):
    # Compose resolves ${VAR:?} in every service whatever the profiles, so a required
    # REDIS_PASSWORD would stop a stack without the gpu profile: it is optional in the file,
    # and the broker itself refuses to start without it.
    refs = [r for r in references(compose) if (r.group("name") or r.group("bare"))
            == "REDIS_PASSWORD"]
    assert refs and all(r.group("op") == ":-" for r in refs)
    script = interpolate(argv_of(compose["services"]["redis"])[-1], {})
    (tmp_path / "redis-server").write_text('#!/bin/sh\necho "serving with $*"\n')
    (tmp_path / "redis-server").chmod(0o755)
    path = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    refused = subprocess.run(["sh", "-c", script], env={**path, "REDISCLI_AUTH": ""},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "set REDIS_PASSWORD" in refused.stderr
    served = subprocess.run(["sh", "-c", script], env={**path, "REDISCLI_AUTH": "s3cret"},
                            capture_output=True, text=True, timeout=30)
    assert served.returncode == 0 and "--requirepass s3cret" in served.stdout


def test_the_gpu_workers_celery_app_imports_from_the_locked_packages(compose):
    # The worker's health check names the provider's Celery app: it must import with the
    # lock's Celery (celery 5.7 broke the provider's import; the lock pins 5.6.3).
    check = " ".join(compose["services"]["airflow-worker-gpu"]["healthcheck"]["test"])
    module = re.search(r"--app (\S+)\.app\b", check)
    assert module, check
    script = f"import {module.group(1)} as m; print(m.app.main)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gpu_image_is_the_project_image_with_cuda_tensorflow(compose):
    assert project_gpu_dockerfile_problems(compose) == []


@pytest.fixture(scope="module")
def training_tasks(compose, example, tmp_path_factory) -> dict[str, dict[str, Any]]:
    return parsed_training_tasks(compose, example, tmp_path_factory.mktemp("airflow-home"))


def test_training_tasks_go_to_the_gpu_worker(compose, training_tasks):
    assert routing_problems(compose, training_tasks) == []


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


def _airflow_env(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    """Set an environment variable on every Airflow component."""
    def mutate(doc: dict[str, Any]) -> None:
        for name in airflow_services(doc):
            _env(name, key, value)(doc)
    return mutate


def _rename_project_image(image: str) -> Callable[[dict[str, Any]], None]:
    """Build the project image under another name (every service that builds it)."""
    def mutate(doc: dict[str, Any]) -> None:
        for service in doc["services"].values():
            if "build" in service and dockerfile_of(service) == "Dockerfile":
                service["image"] = image
    return mutate


def _gpu_worker_command(*argv: str) -> Callable[[dict[str, Any]], None]:
    return _set("services.airflow-worker-gpu.command", list(argv))


GPU_SLOTS = "${LANDUSE_GPU_POOL_SLOTS:-1}"


BROKEN: list[tuple[str, Callable[[dict[str, Any]], list[str]], Callable[..., None]]] = [
    ("unknown service key", schema_problems, _set("services.postgres.colour", "blue")),
    ("depends on a missing service", reference_problems,
     _set("services.airflow-apiserver.depends_on", {"redis": {"condition": "service_started"}})),
    ("depends on a gpu-only service", reference_problems,
     _set("services.airflow-triggerer.depends_on", {"airflow-worker-gpu": {}})),
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
    ("GPU outside the profile", gpu_problems, _delete("services.airflow-worker-gpu.profiles")),
    ("gpu profile without devices", gpu_problems, _delete("services.airflow-worker-gpu.deploy")),
    ("gpu reserved on another service", gpu_problems,
     _set("services.spark-worker.gpus", "all")),
    ("GPU reserved without the nvidia driver", gpu_problems,
     _set("services.airflow-worker-gpu.deploy.resources.reservations.devices",
          [{"capabilities": ["gpu"]}])),
    ("GPU worker is a scheduler", gpu_problems, _gpu_worker_command("airflow", "scheduler")),
    ("GPU worker serves another queue", gpu_problems,
     _gpu_worker_command("airflow", "celery", "worker", "--queues", "cuda",
                         "--concurrency", GPU_SLOTS)),
    ("GPU worker serves the default queue too", gpu_problems,
     _gpu_worker_command("airflow", "celery", "worker", "--queues", "gpu,default",
                         "--concurrency", GPU_SLOTS)),
    ("GPU worker serves every queue", gpu_problems,
     _gpu_worker_command("airflow", "celery", "worker", "--concurrency", GPU_SLOTS)),
    ("GPU worker concurrency off the pool", gpu_problems,
     _gpu_worker_command("airflow", "celery", "worker", "--queues", "gpu",
                         "--concurrency", "4")),
    ("training queue is not the GPU worker's", gpu_problems,
     _airflow_env("LANDUSE_GPU_QUEUE", "default")),
    ("GPU worker on the CPU image", gpu_problems,
     _set("services.airflow-worker-gpu.image", "landuse-airflow:latest")),
    ("no executor honours queues", project_executor_problems,
     _airflow_env("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")),
    ("components disagree on the default executor", project_executor_problems,
     _env("airflow-scheduler", "AIRFLOW__CORE__EXECUTOR", "CeleryExecutor,LocalExecutor")),
    ("training executor not configured", project_executor_problems,
     _airflow_env("LANDUSE_GPU_EXECUTOR", "${LANDUSE_GPU_EXECUTOR:-EdgeExecutor}")),
    ("training executor ignores queues with the gpu profile", project_executor_problems,
     _airflow_env("LANDUSE_GPU_EXECUTOR", "LocalExecutor")),
    ("broker published on the host", project_executor_problems,
     _set("services.redis.ports", ["127.0.0.1:6379:6379"])),
    ("broker is not a service", project_executor_problems,
     _airflow_env("AIRFLOW__CELERY__BROKER_URL",
                  "redis://default:${REDIS_PASSWORD:?set it}@broker:6379/0")),
    ("scheduler and worker use different brokers", project_executor_problems,
     _env("airflow-scheduler", "AIRFLOW__CELERY__BROKER_URL",
          "redis://default:${REDIS_PASSWORD:?set it}@redis:6379/1")),
    ("broker without a healthcheck", project_executor_problems,
     _delete("services.redis.healthcheck")),
    ("GPU worker does not wait for the broker", project_executor_problems,
     _delete("services.airflow-worker-gpu.depends_on.redis")),
    ("GPU image from the project Dockerfile", project_gpu_dockerfile_problems,
     _set("services.airflow-worker-gpu.build", ".")),
    ("GPU image on another image than the project's", project_gpu_dockerfile_problems,
     _rename_project_image("landuse-other:latest")),
    ("GPU image under the project image's name", project_dockerfile_problems,
     _set("services.airflow-worker-gpu.image", "landuse-airflow:latest")),
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
    (r"^ARG AIRFLOW_IMAGE=\S+", "ARG AIRFLOW_IMAGE=python:3.11-slim"),  # not the official image
    (r"-r /opt/landuse/requirements\.lock", "-r /opt/landuse/requirements.txt"),
    (r"^COPY .*requirements\.lock.*$", ""),
])
def test_dockerfile_check_catches_a_broken_dockerfile(compose, edit):
    pattern, new = edit
    dockerfile = DOCKERFILE.read_text()
    broken = re.sub(pattern, new, dockerfile, count=1, flags=re.MULTILINE)
    assert broken != dockerfile
    assert project_dockerfile_problems(compose, broken)


@pytest.mark.parametrize("edit", [
    (r"^ARG TENSORFLOW_VERSION=\S+", "ARG TENSORFLOW_VERSION=2.20.0"),  # not the lock's
    (r"tensorflow\[and-cuda\]", "tensorflow"),                          # no CUDA libraries
    (r"&& pip uninstall -y tensorflow-cpu \\\n\s*", ""),              # both TensorFlows
    (r" -c /tmp/constraints\.txt", ""),                                # the lock not held
    (r"^FROM \S+", "FROM apache/airflow:3.3.2-python3.11"),           # not the project image
    (r"\s*&& python -c .*is_built_with_cuda.*$", ""),                  # CUDA never checked
])
def test_gpu_dockerfile_check_catches_a_broken_dockerfile(compose, edit):
    pattern, new = edit
    dockerfile = DOCKERFILE_GPU.read_text()
    broken = re.sub(pattern, new, dockerfile, count=1, flags=re.MULTILINE)
    assert broken != dockerfile
    assert project_gpu_dockerfile_problems(compose, broken)


@pytest.mark.parametrize("edit", [
    ("train_candidate", "queue", "default"),      # a queue no GPU worker serves
    ("train_candidate", "executor", None),        # the default LocalExecutor ignores queues
    ("train_candidate", "pool", "default_pool"),  # no training task left
    ("plan", "executor", "CeleryExecutor"),       # with queue gpu: another task on the GPUs
])
def test_routing_check_catches_misrouted_tasks(compose, training_tasks, edit):
    task_id, key, value = edit
    tasks = copy.deepcopy(training_tasks)
    tasks[task_id][key] = value
    if task_id == "plan":
        tasks[task_id]["queue"] = "gpu"
    assert routing_problems(compose, tasks)


def test_routing_check_catches_a_gpu_worker_on_another_queue(compose, training_tasks):
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-worker-gpu"]["command"] = [
        "airflow", "celery", "worker", "--queues", "cuda", "--concurrency", GPU_SLOTS]
    assert routing_problems(broken, training_tasks)
