"""Two models in one fleet: the API, the control worker and two GPU worker processes started
with the same command line, one per tiny checkpoint of a different size (64x64 images, the
default model; 32x32, served as `tiny-b`). Each job runs on the worker of its model only, and
its outputs are what that model gives for the same request in this process."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from janus_batch.migrate import upgrade
from janus_batch.ops.stack import Child, local_stack, worker_command
from tests import services
from tests.e2e.helpers import get_json, jsonl, logs, post_job, wait_final
from worker.encode import read_metadata

CAPTION = {"prompt": "Describe this image.", "max_new_tokens": 6}
COLORS = [(200, 30, 30), (30, 30, 200)]


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint: other weights, 32x32 images (4 image tokens)."""
    from janus import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-b") / "tiny32", 32, seed=1)


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 32), color).save(buffer, "PNG")
    return buffer.getvalue()


def _wait_for_models(http: httpx.Client, children: list[Child], names: list[str]) -> None:
    """Until /readyz counts a live worker of each model (their heartbeats)."""
    deadline = time.monotonic() + 180
    models: dict[str, Any] = {}
    while time.monotonic() < deadline:
        models = get_json(http, "/readyz").get("models", {})
        if all(models.get(name, {}).get("workers") == 1 for name in names):
            return
        if any(child.proc.poll() is not None for child in children):
            break
        time.sleep(0.5)
    raise AssertionError(f"workers not up: {models}\n{logs(*children)}")


def _claimed_jobs(child: Child) -> set[str]:
    """The jobs whose chunks a worker claimed (its log: `job=<id> chunk claimed`)."""
    lines = child.log.read_text(errors="replace").splitlines()
    return {line.split("job=")[1].split()[0] for line in lines if " chunk claimed " in line}


def test_each_job_runs_on_the_worker_of_its_model(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    queue_prefix: str,
    tiny_checkpoint: Path,
    tiny_b: Path,
    processes: Any,
) -> None:
    upgrade(pg_url)
    env = services.process_env(
        tmp_path,
        database_url=pg_url,
        redis_url=redis_url,
        queue_prefix=queue_prefix,
        model=tiny_checkpoint,
        default_model=str(tiny_checkpoint),
        batch_rows="4",
    )
    env_b = {**env, "JANUS_BATCH_MODEL": str(tiny_b), "JANUS_BATCH_MODEL_NAME": "tiny-b"}
    with local_stack(env, tmp_path / "logs", beat=False) as stack:
        worker_b = processes("worker-b", worker_command("b"), env_b)
        children = [*stack.children, worker_b]
        with httpx.Client(base_url=stack.api_url, timeout=30) as http:
            _wait_for_models(http, children, [str(tiny_checkpoint), "tiny-b"])
            files = [
                http.post(
                    "/v1/files",
                    files={"file": (f"{i}.png", _png(color), "image/png")},
                    data={"purpose": "image"},
                ).json()["id"]
                for i, color in enumerate(COLORS)
            ]
            items = [{"image": file_id, "seed": 1} for file_id in files]
            body = {"kind": "caption", "params": CAPTION, "items": items}
            prompts = [{"prompt": "a red fox", "seed": 5}, {"prompt": "a blue bird", "seed": 6}]
            submitted = {
                "caption_a": post_job(http, body),
                "caption_b": post_job(http, {**body, "model": "tiny-b"}),
                "generate_b": post_job(
                    http, {"kind": "generate", "model": "tiny-b", "items": prompts}
                ),
            }
            done = {name: wait_final(http, job["id"], children) for name, job in submitted.items()}
            lines = {
                name: jsonl(http.get(f"/v1/jobs/{job['id']}/results").content)
                for name, job in done.items()
            }
            images = [
                http.get(f"/v1/jobs/{done['generate_b']['id']}/files/{line['images'][0]['key']}")
                for line in lines["generate_b"]
            ]
            listed = {j["id"]: j["model"] for j in get_json(http, "/v1/jobs")["data"]}
        claimed_a, claimed_b = _claimed_jobs(stack.worker), _claimed_jobs(worker_b)

    ids = {name: job["id"] for name, job in done.items()}
    assert all(job["status"] == "succeeded" for job in done.values()), done
    assert listed == {
        ids["caption_a"]: str(tiny_checkpoint),
        ids["caption_b"]: "tiny-b",
        ids["generate_b"]: "tiny-b",
    }
    # each worker claimed its own model's chunks, and only those
    assert claimed_a == {ids["caption_a"]}, logs(stack.worker)
    assert claimed_b == {ids["caption_b"], ids["generate_b"]}, logs(worker_b)
    models = {name: {line["model"] for line in job_lines} for name, job_lines in lines.items()}
    assert models == {
        "caption_a": {str(tiny_checkpoint)}, "caption_b": {"tiny-b"}, "generate_b": {"tiny-b"},
    }  # fmt: skip

    # the outputs are those of the job's model
    from janus import CaptionRequest, GenerateRequest, JanusEngine
    from worker.caption import open_image

    engines = {
        "a": JanusEngine.load(str(tiny_checkpoint), device="cpu", dtype="float32"),
        "b": JanusEngine.load(str(tiny_b), device="cpu", dtype="float32"),
    }
    for model, engine in engines.items():
        requests = [
            CaptionRequest(
                open_image(_png(color), "x.png", engine.image_size, max_pixels=1 << 24),
                question=CAPTION["prompt"],
                max_new_tokens=CAPTION["max_new_tokens"],
                seed=1,
            )
            for color in COLORS
        ]
        expected = [result.text for result in engine.caption(requests)]
        assert [line["caption"] for line in lines[f"caption_{model}"]] == expected, model
    assert [line["caption"] for line in lines["caption_a"]] != [
        line["caption"] for line in lines["caption_b"]
    ]
    for line, response in zip(lines["generate_b"], images, strict=True):
        assert response.status_code == 200
        assert read_metadata(response.content)["model"] == "tiny-b"
        fields = {k: v for k, v in line["input"].items() if k != "custom_id" and v is not None}
        [expected_result] = engines["b"].generate([GenerateRequest(**fields)])
        got = Image.open(io.BytesIO(response.content))
        assert got.size == (32, 32)  # tiny-b's size, not the default model's 64x64
        assert got.convert("RGB").tobytes() == expected_result.images[0].image.tobytes()
