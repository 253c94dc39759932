"""An image regenerates alone from its recorded seed: a different job, a different batch
(other prompts beside it, another item index), through the whole pipeline, same pixels."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from janus.seeds import derive_seed
from tests.e2e.helpers import get_json, jsonl, post_job, wait_final

TARGET = "a robot reading a newspaper in a cafe"


def download(http: httpx.Client, job_id: str, key: str) -> bytes:
    response = http.get(f"/v1/jobs/{job_id}/files/{key}")
    assert response.status_code == 200, response.text
    return response.content


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_generated_image_regenerates_alone(stack_env: dict[str, str], start_stack: Any) -> None:
    stack = start_stack(stack_env)
    children = stack.children
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        first = post_job(
            http,
            {
                "kind": "generate",
                "params": {"n": 3, "cfg_weight": 3.5, "temperature": 0.9},
                "items": [
                    {"prompt": "two dogs running on a beach", "n": 2},
                    {"prompt": TARGET, "seed": 4242},
                ],
            },
        )
        first = wait_final(http, first["id"], children)
        assert first["status"] == "succeeded", first
        target = jsonl(http.get(f"/v1/jobs/{first['id']}/results").content)[1]
        assert target["input"]["prompt"] == TARGET and target["idx"] == 1
        original = target["images"][2]  # k > 0: its seed was derived, not given
        assert original["index"] == 2
        assert original["seed"] == derive_seed(4242, 2) != 4242

        again = post_job(
            http,
            {
                "kind": "generate",
                "params": {"n": 2},
                "items": [
                    {"prompt": "a bowl of fresh fruit on a white plate", "seed": 7},
                    {
                        "prompt": TARGET,
                        "n": 1,
                        "seed": original["seed"],
                        "cfg_weight": target["input"]["cfg_weight"],
                        "temperature": target["input"]["temperature"],
                    },
                    {"prompt": "an astronaut riding a horse on the moon", "n": 3, "seed": 8},
                ],
            },
        )
        again = wait_final(http, again["id"], children)
        assert again["status"] == "succeeded", again
        line = jsonl(http.get(f"/v1/jobs/{again['id']}/results").content)[1]
        assert line["input"]["cfg_weight"] == 3.5 and line["input"]["temperature"] == 0.9
        [regenerated] = line["images"]
        assert regenerated["seed"] == original["seed"]
        assert regenerated["key"] == f"jobs/{again['id']}/images/00000001_0.png"

        before = pixels(download(http, first["id"], original["key"]))
        after = pixels(download(http, again["id"], regenerated["key"]))
        assert before[:2] == after[:2] == ("RGB", (64, 64))
        assert after[2] == before[2], "the regenerated image differs from the original"

        # The check has teeth: the original's sibling images are different pictures.
        siblings = [
            pixels(download(http, first["id"], image["key"]))[2]
            for image in target["images"]
            if image["index"] != 2
        ]
        assert all(other != before[2] for other in siblings)
        assert get_json(http, f"/v1/jobs/{again['id']}")["counts"]["succeeded"] == 3
