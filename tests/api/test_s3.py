"""The API on S3 storage (moto server): uploads land in the bucket, a final job's results_url
is presigned, results and output files stream from the bucket, readyz pings the bucket."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.api.helpers import caption_job, set_job


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_s3_uploads_presigned_results_and_downloads(client, set_env, s3_env, database_url):
    set_env(
        storage_url=s3_env.storage_url,
        s3_endpoint_url=s3_env.endpoint_url,
        s3_region=s3_env.region,
    )
    s3 = s3_env.client()
    assert client.get("/readyz").json()["checks"]["storage"] == "ok"

    data = b"\xff\xd8\xff jpeg-ish bytes"
    sha = hashlib.sha256(data).hexdigest()
    upload = client.post("/v1/files", files={"file": ("dog.jpg", data)}, data={"purpose": "image"})
    assert upload.status_code == 201, upload.text
    obj = s3.get_object(Bucket=s3_env.bucket, Key=f"jobs/inputs/local/{sha}/dog.jpg")
    assert obj["Body"].read() == data
    assert obj["ContentType"] == "image/jpeg"
    again = client.post("/v1/files", files={"file": ("d.jpg", data)}, data={"purpose": "image"})
    assert again.status_code == 200 and again.json()["id"] == upload.json()["id"]
    content = client.get(f"/v1/files/{upload.json()['id']}/content")
    assert content.status_code == 200 and content.content == data

    job = caption_job(client, n=1)
    assert job["output"]["prefix"] == f"s3://{s3_env.bucket}/jobs/jobs/{job['id']}"
    assert job["output"]["results_url"].startswith("http://testserver/")  # not final yet

    key = f"jobs/jobs/{job['id']}"
    s3.put_object(Bucket=s3_env.bucket, Key=f"{key}/results.jsonl", Body=b'{"idx": 0}\n')
    s3.put_object(Bucket=s3_env.bucket, Key=f"{key}/images/00000000_0.png", Body=b"PNG!")
    set_job(database_url, job["id"], status="succeeded")

    final = client.get(f"/v1/jobs/{job['id']}").json()
    url = final["output"]["results_url"]
    assert url.startswith(s3_env.endpoint_url) and "Signature" in url
    assert httpx.get(url).content == b'{"idx": 0}\n'
    assert client.get(f"/v1/jobs/{job['id']}/results").text == '{"idx": 0}\n'
    image = client.get(f"/v1/jobs/{job['id']}/files/jobs/{job['id']}/images/00000000_0.png")
    assert image.status_code == 200 and image.content == b"PNG!"
    missing = client.get(f"/v1/jobs/{job['id']}/files/images/nope.png")
    assert missing.status_code == 404
