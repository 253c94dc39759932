"""Oversized values are refused with a 4xx, never a 500: long storage keys in download and
thumbnail URLs, a huge top_k."""

from __future__ import annotations

import pytest

from tests.api.helpers import caption_job


@pytest.mark.parametrize(
    "key",
    [
        "x" * 5000,
        "images/" + "x" * 300 + ".png",
        "images/" + "ü" * 200 + ".png",  # 400 bytes in one segment
        "/".join(["abcdefgh"] * 130),  # every segment short, 1169 bytes in all
    ],
)
def test_long_output_keys_are_refused(client, key) -> None:
    job = caption_job(client, n=1)
    response = client.get(f"/v1/jobs/{job['id']}/files/{key}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "key"
    assert len(response.json()["error"]["message"]) < 400
    thumb = client.get(f"/ui/thumbs/{job['id']}/{key}")
    assert thumb.status_code in (404, 422), thumb.text


def test_keys_at_the_limit_are_just_missing(client) -> None:
    job = caption_job(client, n=1)
    for key in ("images/" + "x" * 255, "images/" + "x" * 240 + ".png"):
        response = client.get(f"/v1/jobs/{job['id']}/files/{key}")
        assert response.status_code == 404, response.text
        thumb = client.get(f"/ui/thumbs/{job['id']}/{key}")
        assert thumb.status_code in (404, 422), thumb.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"params": {"top_k": 10**30}, "items": ["fox"]}, "params.top_k"),
        ({"params": {"top_k": 2**31}, "items": ["fox"]}, "params.top_k"),
        ({"items": [{"prompt": "fox", "top_k": 10**30}]}, "items[0].top_k"),
        ({"items": [{"prompt": "fox", "top_k": 2**31}]}, "items[0].top_k"),
    ],
)
def test_top_k_is_bounded(client, body, field) -> None:
    response = client.post("/v1/jobs", json={"kind": "generate", **body})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


def test_top_k_at_the_bound_is_accepted(client) -> None:
    body = {"kind": "generate", "params": {"top_k": 2**31 - 1}, "items": [{"prompt": "fox"}]}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["params"]["top_k"] == 2**31 - 1
