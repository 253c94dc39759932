"""Tenant isolation on S3 storage: user-supplied s3:// references must not point into the
service's own storage (other users' uploads and outputs); uploads are used by file id."""

from __future__ import annotations

import pytest

from janus_batch.inputs import points_into_storage
from tests.api.helpers import caption_job

STORE = "s3://corp-store/janus"
HINT = "points into this service's own storage; upload the file (POST /v1/files)"


@pytest.mark.parametrize(
    ("ref", "listing", "inside"),
    [
        ("s3://corp-store/janus/inputs/alice/abc/x.png", False, True),
        ("S3://Corp-Store/janus/jobs/job_1/errors.jsonl", False, True),
        ("s3://corp-store//janus/./inputs/x.png", False, True),
        ("s3://corp-store/other/../janus/inputs/x.png", False, True),
        ("s3://corp-store/janus", False, True),
        ("s3://corp-store/janusx/a.png", False, False),
        ("s3://corp-store/photos/a.png", False, False),
        ("s3://other-bucket/janus/inputs/x.png", False, False),
        ("https://corp-store/janus/inputs/x.png", False, False),
        ("s3://corp-store/", True, True),
        ("s3://corp-store", True, True),
        ("s3://corp-store/jan", True, True),
        ("s3://corp-store/janus/inputs/", True, True),
        ("s3://corp-store/photos/", True, False),
        ("s3://corp-store/janusx/", True, False),
    ],
)
def test_points_into_storage(ref: str, listing: bool, inside: bool) -> None:
    assert points_into_storage(ref, STORE, listing=listing) is inside


def test_whole_bucket_storage_and_local_storage() -> None:
    assert points_into_storage("s3://corp-store/any/key.png", "s3://corp-store")
    assert points_into_storage("s3://corp-store/any/key.png", "s3://corp-store/")
    assert not points_into_storage("s3://corp-store/any/key.png", "/var/lib/janus/results")
    assert not points_into_storage("s3://corp-store/any/key.png", None)


BODIES = [
    (
        {"kind": "caption", "items": [{"image": "s3://corp-store/janus/inputs/bob/ab/x.png"}]},
        "items[0].image",
    ),
    (
        {
            "kind": "caption",
            "items": [
                {"image": "s3://corp-store/photos/ok.png"},
                " s3://corp-store/janus/inputs/bob/ab/x.png",
            ],
        },
        "items[1].image",
    ),
    (
        {
            "kind": "caption",
            "source": {"manifest": "s3://corp-store/janus/jobs/job_9/errors.jsonl"},
        },
        "source.manifest",
    ),
    (
        {"kind": "generate", "source": {"manifest": "s3://corp-store/janus/inputs/b/c/m.jsonl"}},
        "source.manifest",
    ),
    (
        {"kind": "caption", "source": {"s3_prefix": "s3://corp-store/janus/inputs/"}},
        "source.s3_prefix",
    ),
    ({"kind": "caption", "source": {"s3_prefix": "s3://corp-store/"}}, "source.s3_prefix"),
]


@pytest.mark.parametrize(("body", "field"), BODIES)
def test_references_into_the_storage_are_refused(client, set_env, body, field) -> None:
    set_env(storage_url=STORE, s3_region="us-east-1")
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert HINT in error["message"]


def test_other_locations_and_file_ids_still_work(client, set_env, s3_env) -> None:
    set_env(
        storage_url=s3_env.storage_url,
        s3_endpoint_url=s3_env.endpoint_url,
        s3_region=s3_env.region,
    )
    bucket = s3_env.bucket
    upload = client.post(
        "/v1/files", files={"file": ("dog.png", b"\x89PNG bytes")}, data={"purpose": "image"}
    )
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    stored = f"s3://{bucket}/jobs/inputs/local/"
    refused = client.post("/v1/jobs", json={"kind": "caption", "items": [stored + "x/dog.png"]})
    assert refused.status_code == 422
    items = [{"image": file_id}, {"image": f"s3://{bucket}/photos/cat.png"}]
    response = client.post("/v1/jobs", json={"kind": "caption", "items": items})
    assert response.status_code == 202, response.text
    source = {"s3_prefix": f"s3://{bucket}/photos/"}
    response = client.post("/v1/jobs", json={"kind": "caption", "source": source})
    assert response.status_code == 202, response.text


def test_local_storage_accepts_any_s3_reference(client) -> None:
    caption_job(client, n=1)


def test_the_job_service_applies_the_rule_whatever_the_transport(client, set_env) -> None:
    """No HTTP here: a notebook or a future gRPC transport calling the service directly gets
    the same refusal, and nothing is written."""
    from janus_batch import jobs
    from janus_batch.inputs import InvalidInput
    from janus_batch.queue import get_celery

    settings = set_env(storage_url=STORE)
    for kwargs, field in (
        ({"items": [{"image": f"{STORE}/inputs/bob/x.png"}]}, "items[0].image"),
        ({"source": {"manifest": f"{STORE}/jobs/job_1/results.jsonl"}}, "source.manifest"),
        ({"source": {"s3_prefix": "s3://corp-store/"}}, "source.s3_prefix"),
    ):
        with pytest.raises(InvalidInput) as refused:
            jobs.create_job(settings, get_celery(), owner="alice", kind="caption", **kwargs)
        assert refused.value.field == field
        assert HINT in str(refused.value)
    listed, _ = jobs.list_jobs(settings.resolved_database_url(), "alice")
    assert listed == []
