"""docker-compose.yaml against the Compose Specification schema, and internally consistent.

No Docker engine runs here, so the file is checked statically: schema-valid, every
reference resolves, secrets only from .env, ports on loopback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((PROJECT / "docker-compose.yaml").read_text())


def test_matches_compose_specification(compose):
    schema = json.loads((PROJECT / "tests" / "fixtures" / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema)


def test_references_resolve(compose):
    services = compose["services"]
    volumes = set(compose.get("volumes", {}))
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (PROJECT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
    assert (PROJECT / "Dockerfile").exists()


def test_variables_are_documented_in_env_example(compose):
    text = (PROJECT / "docker-compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (PROJECT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    # No secret has a value in the example.
    for key in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
                "AZURE_STORAGE_CONNECTION_STRING"):
        assert re.search(rf"^{key}=$", example, re.MULTILINE), f"{key} has a value"


def test_ports_bound_to_loopback(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
