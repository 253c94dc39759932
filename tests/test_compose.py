"""docker-compose.yml is valid Compose and only sets variables the settings class reads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from janus_batch.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
OUR_IMAGES = ("docker/api.Dockerfile", "docker/worker.Dockerfile")
# Read by libraries our processes use, not by Settings (boto3's credential chain, the HF cache).
LIBRARY_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_HOME", "CUDA_VISIBLE_DEVICES"}


def _load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    proc = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_references_point_at_defined_services_and_volumes() -> None:
    doc = _load()
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on missing service {dep}"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in doc["volumes"], f"{name} mounts undefined volume {source}"
        build = svc.get("build")
        if build:
            assert (ROOT / build["dockerfile"]).is_file()


def test_every_variable_set_for_our_services_is_read_by_settings() -> None:
    fields = {f"JANUS_BATCH_{name.upper()}" for name in Settings.model_fields}
    checked = 0
    for name, svc in _load()["services"].items():
        if svc.get("build", {}).get("dockerfile") not in OUR_IMAGES:
            continue
        for var in svc.get("environment", {}):
            checked += 1
            if var.startswith("JANUS_BATCH_"):
                assert var in fields, f"{name}: {var} is not a Settings field"
            else:
                assert var in LIBRARY_VARS, f"{name}: {var} is read by nothing we run"
    assert checked > 20


def test_api_image_has_no_torch() -> None:
    api = (ROOT / "docker/api.Dockerfile").read_text()
    assert "torch" not in api.split("\n", 1)[1].replace("no torch", "")
    assert "[model]" not in api
