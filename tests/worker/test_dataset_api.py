"""Dataset jobs through the real API (upload, submit, read results and sidecars) and the real
pipeline (the in-process worker drains what the API enqueued)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.main import create_app
from tests.fixtures.datasets import csv_text, image_server, img2dataset_shards, jpeg
from tests.worker.helpers import drain, read_jsonl


def test_webdataset_shards_uploaded_and_on_s3_through_the_api(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(chunk_size="4")
    shards, captions = img2dataset_shards(2, 2)
    s3 = s3_env.client()
    s3.put_object(Bucket=s3_env.bucket, Key="more/00000.tar", Body=shards["00001.tar"])
    with TestClient(create_app()) as client:
        upload = client.post("/v1/files", files={"file": ("00000.tar", shards["00000.tar"])},
                             data={"purpose": "dataset"})  # fmt: skip
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        body = {
            "kind": "caption",
            "params": {"prompts": {"alt": "Alt text: {caption}. Describe.", "short": "Name it."}},
            "source": {"webdataset": [file_id, f"s3://{s3_env.bucket}/more/{{00000..00000}}.tar"]},
        }
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert created.json()["source"]["webdataset"][0] == file_id
        drain(ctx)

        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job
        counts = job["counts"]
        assert (counts["total"], counts["succeeded"], counts["failed"]) == (6, 4, 2)
        results = read_jsonl(client.get(f"/v1/jobs/{job_id}/results").content)
        assert {r["custom_id"] for r in results} == set(captions)  # joined back to the keys
        assert all(set(r["captions"]) == {"alt", "short"} for r in results)
        errors = read_jsonl(client.get(f"/v1/jobs/{job_id}/results?errors=true").content)
        assert {e["custom_id"] for e in errors} == {"00000_corrupt", "00000_noimage"}
        assert any(f"{file_id}#00000_corrupt.jpg" in e["error"] for e in errors)
        sidecar = client.get(f"/v1/jobs/{job_id}/files/sidecars/{file_id}.captions.jsonl")
        assert sidecar.status_code == 200, sidecar.text
        assert [line["__key__"] for line in read_jsonl(sidecar.content)] == [
            "000000000", "00000_corrupt", "000000001", "00000_noimage"]  # fmt: skip

        refused = client.post(
            "/v1/jobs", json={"kind": "caption", "source": {"webdataset": "https://h/a.tar"}}
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["field"] == "source.webdataset"
        generate = client.post(
            "/v1/jobs", json={"kind": "generate", "source": {"webdataset": "s3://b/a.tar"}}
        )
        assert generate.status_code == 422


def test_a_csv_of_urls_through_the_api(make_ctx: Any, s3_env: Any) -> None:
    images = {f"/{i}.jpg": jpeg(i) for i in range(3)}
    with image_server(images) as base:
        ctx = make_ctx(egress_allow_http="true", egress_allow=base.removeprefix("http://"))
        rows = [
            {"id": f"r{i}", "image_url": f"{base}/{i}.jpg", "alt": f"alt {i}"} for i in range(3)
        ]
        with TestClient(create_app()) as client:
            upload = client.post("/v1/files", files={"file": ("urls.csv", csv_text(rows))},
                                 data={"purpose": "dataset"})  # fmt: skip
            assert upload.status_code == 201, upload.text
            body = {
                "kind": "caption",
                "params": {"prompt": "The alt text says {alt}. Describe the image."},
                "source": {
                    "csv": upload.json()["id"],
                    "image_column": "image_url",
                    "key_column": "id",
                },
            }
            created = client.post("/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            drain(ctx)
            job_id = created.json()["id"]
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
            results = read_jsonl(client.get(f"/v1/jobs/{job_id}/results").content)
    assert [r["custom_id"] for r in results] == ["r0", "r1", "r2"]
    assert results[1]["input"]["prompt"] == "The alt text says alt 1. Describe the image."
    assert results[1]["input"]["meta"] == {"id": "r1", "alt": "alt 1"}
