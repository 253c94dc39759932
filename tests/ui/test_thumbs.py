"""Thumbnails: small JPEGs of output and input images, cached in storage; nothing outside the
job's prefix can be named."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from api.ui import thumbs
from api.ui.thumbs import NotAnImage, make_thumbnail, snap_size
from janus_batch.images import to_rgb
from janus_batch.states import ItemStatus
from tests.fixtures.datasets import make_shard, sample
from tests.security.images import header_only_png
from tests.ui.art import paint, png
from tests.ui.helpers import ItemSpec, generated_job, insert_job

LIMIT = 16 * 1024 * 1024


def decode(data: bytes) -> Image.Image:
    img = Image.open(BytesIO(data))
    img.load()
    return img


@pytest.fixture
def big_job(database_url, storage_root):
    """A finished generate job whose one image is a 1024-pixel PNG."""
    job = generated_job(database_url, storage_root, [("balloon", "a balloon")], n=1)
    path = storage_root / job.prefix / "images/00000000_0.png"
    path.write_bytes(png(paint("balloon", 5, size=1024)))
    return job, path


def test_output_thumbnail_is_small_and_cached(client, big_job, storage_root):
    job, original = big_job
    url = f"/ui/thumbs/{job.id}/images/00000000_0.png"
    first = client.get(url, params={"size": 128})
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/jpeg"
    assert "max-age" in first.headers["cache-control"]
    assert first.headers["x-thumbnail-cache"] == "miss"
    thumb = decode(first.content)
    assert thumb.format == "JPEG" and max(thumb.size) <= 128 and max(thumb.size) >= 96
    assert len(first.content) * 10 < original.stat().st_size
    cached = storage_root / job.prefix / "thumbs/128/images/00000000_0.png.jpg"
    assert cached.read_bytes() == first.content
    again = client.get(url, params={"size": 128})
    assert again.headers["x-thumbnail-cache"] == "hit" and again.content == first.content

    assert max(decode(client.get(url).content).size) == 256  # the default
    assert max(decode(client.get(url, params={"size": 100_000}).content).size) == 512
    assert max(decode(client.get(url, params={"size": 1}).content).size) == 32
    full_key = f"/ui/thumbs/{job.id}/{job.prefix}/images/00000000_0.png"
    assert client.get(full_key, params={"size": 64}).status_code == 200


def test_thumbnail_refuses_keys_outside_the_job(client, database_url, storage_root):
    mine = generated_job(database_url, storage_root, [("shapes", "circles")], n=1)
    other = generated_job(database_url, storage_root, [("lake", "a lake")], n=1)
    base = f"/ui/thumbs/{mine.id}"
    assert client.get(f"/ui/thumbs/{other.id}/images/00000000_0.png").status_code == 200
    for key in (
        f"{other.prefix}/images/00000000_0.png",  # another job's key, as a full key
        f"images/%2E%2E/%2E%2E/{other.id}/images/00000000_0.png",  # climbing out
        "thumbs/256/images/00000000_0.png.jpg",  # a thumbnail of a thumbnail
        "images/missing.png",
    ):
        response = client.get(f"{base}/{key}")
        assert response.status_code == 404, key
        assert "error" in response.json()
    (storage_root / mine.prefix / "results.jsonl").write_text('{"idx": 0}\n')
    not_image = client.get(f"{base}/results.jsonl")
    assert not_image.status_code == 422 and "not an image" in not_image.json()["error"]["message"]
    assert client.get("/ui/thumbs/job_000000000000000000000000/images/x.png").status_code == 404


def test_input_thumbnails_of_caption_items(client, database_url, storage_root):
    key = "inputs/local/0123/cat.png"
    (storage_root / key).parent.mkdir(parents=True)
    (storage_root / key).write_bytes(png(paint("mountains", 3, size=800)))
    items = [
        ItemSpec(
            {"image": "file_abc", "uri": f"storage:{key}", "prompt": "?"},
            result={"caption": "mountains"},
        ),
        ItemSpec(
            {"image": "https://127.0.0.1:9/x.jpg", "uri": "https://127.0.0.1:9/x.jpg"},
            status=ItemStatus.FAILED,
            error="refused",
        ),
        ItemSpec({"image": "file:///etc/passwd", "uri": "file:///etc/passwd"}),
    ]
    job = insert_job(database_url, "caption", items)
    ok = client.get(f"/ui/inputs/{job.id}/0", params={"size": 200})
    assert ok.status_code == 200, ok.text
    assert max(decode(ok.content).size) <= 200
    assert (storage_root / job.prefix / f"thumbs/{snap_size(200)}/inputs/00000000.jpg").is_file()

    remote = client.get(f"/ui/inputs/{job.id}/1")  # the API never fetches a user's URL
    assert remote.status_code == 404
    assert "not in the service's storage" in remote.json()["error"]["message"]
    assert client.get(f"/ui/inputs/{job.id}/2").status_code == 404  # never a local path
    assert client.get(f"/ui/inputs/{job.id}/3").status_code == 404
    gen = generated_job(database_url, storage_root, [("dunes", "d")], n=1)
    assert client.get(f"/ui/inputs/{gen.id}/0").status_code == 404  # not a caption job


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_input_thumbnail_never_reads_a_users_s3_reference(client, set_env, s3_env, database_url):
    set_env(s3_endpoint_url=s3_env.endpoint_url, s3_region=s3_env.region)
    s3 = s3_env.client()
    s3.put_object(Bucket=s3_env.bucket, Key="photos/dune.png", Body=png(paint("dunes", 1)))
    uri = f"s3://{s3_env.bucket}/photos/dune.png"
    job = insert_job(database_url, "caption", [ItemSpec({"image": uri, "uri": uri})])
    response = client.get(f"/ui/inputs/{job.id}/0", params={"size": 64})
    assert response.status_code == 404, response.text
    assert "not in the service's storage" in response.json()["error"]["message"]


def test_make_thumbnail_handles_modes_and_orientation():
    rgba = Image.new("RGBA", (300, 100), (255, 0, 0, 0))
    thumb = decode(make_thumbnail(png(rgba), 64, LIMIT))
    assert thumb.mode == "RGB" and thumb.size == (64, 21)
    assert thumb.getpixel((10, 10))[1] > 200  # transparent -> white, not black
    rotated = Image.new("RGB", (200, 100), "blue")
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = BytesIO()
    rotated.save(out, "JPEG", exif=exif)
    assert decode(make_thumbnail(out.getvalue(), 100, LIMIT)).size == (50, 100)
    with pytest.raises(NotAnImage):
        make_thumbnail(b"not an image", 64, LIMIT)
    assert [snap_size(s) for s in (1, 32, 100, 256, 300, 9999)] == [32, 32, 96, 256, 256, 512]


def _sample_images() -> dict[str, Image.Image]:
    """An image of each mode a user may send whose normalisation is not a plain convert."""
    ramp = [[(x * 211 + y * 97) % 1000 for x in range(48)] for y in range(32)]

    def grey(mode: str, scale: float, offset: float = 0.0) -> Image.Image:
        img = Image.new(mode, (48, 32))
        img.putdata([v * scale + offset for row in ramp for v in row])
        return img

    p_transparent = Image.new("P", (48, 32), 3)
    p_transparent.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] * 64)
    p_transparent.paste(1, (0, 0, 20, 32))
    p_transparent.info["transparency"] = 3
    la = Image.merge("LA", (grey("L", 0.25), grey("L", 0.2)))
    rgba = Image.new("RGBA", (48, 32), (255, 0, 0, 90))
    return {
        "I;16 dark": grey("I;16", 20),  # 0..20,000 of 65,535: a dark scan, not white
        "I;16 full": grey("I;16", 65.5),
        "I 8-bit range": grey("I", 0.25),
        "I negative": grey("I", 300, -100_000),
        "F 0..1": grey("F", 0.001),
        "F wide": grey("F", 3.7, -12.5),
        "P transparent": p_transparent,
        "LA": la,
        "RGBA": rgba,
        "CMYK": Image.new("CMYK", (48, 32), (10, 200, 30, 40)),
        "1": grey("L", 0.25).convert("1"),
    }


@pytest.mark.parametrize("name", list(_sample_images()))
def test_thumbnails_normalise_images_as_the_model_does(name: str):
    """janus_batch.images.to_rgb (Pillow only, the API's) gives the pixels of
    janus.images.normalize_image (the model runtime's, with numpy) to within rounding."""
    import numpy as np

    from janus.images import normalize_image

    image = _sample_images()[name]
    ours = np.asarray(to_rgb(image.copy()), dtype=np.int16)
    model = np.asarray(normalize_image(image.copy()), dtype=np.int16)
    assert ours.shape == model.shape
    assert int(np.abs(ours - model).max()) <= 1, name


def test_a_16_bit_grey_thumbnail_is_not_white():
    """A 16-bit grey PNG whose samples stay under a third of the range: its thumbnail is as
    dark as the model's view of it (converting it as 8 bits clipped it all to white)."""
    dark = Image.new("I;16", (200, 100))
    dark.putdata([(x * 100) for _ in range(100) for x in range(200)])  # 0..19,900
    data = png(dark)
    assert Image.open(BytesIO(data)).mode.startswith("I;16")
    thumb = decode(make_thumbnail(data, 64, LIMIT))
    assert thumb.mode == "RGB" and thumb.size == (64, 32)
    left, right = thumb.getpixel((2, 16)), thumb.getpixel((61, 16))
    assert max(left) < 10, left
    assert min(right) > 60 and max(right) < 90, right  # ~19,900 / 65,535 of 255 = 77


def test_images_over_the_pixel_limit_are_never_decoded(client, database_url, storage_root):
    """A 9000x9000 upload (81 Mpx, a few bytes) or output: 422 naming the limit, from the
    header alone (decoding it would fail as truncated), and nothing cached."""
    key = "inputs/local/0123/huge.png"
    (storage_root / key).parent.mkdir(parents=True)
    (storage_root / key).write_bytes(header_only_png(9000, 9000))
    job = insert_job(
        database_url, "caption", [ItemSpec({"image": "file_x", "uri": f"storage:{key}"})]
    )
    response = client.get(f"/ui/inputs/{job.id}/0", params={"size": 128})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {
        "message": "input 0 is too large to preview: image is 9000x9000 = 81,000,000 pixels, "
        "over the 16,777,216-pixel limit (JANUS_BATCH_MAX_IMAGE_PIXELS)",
        "field": "idx",
    }
    assert not (storage_root / job.prefix / "thumbs").exists()

    gen = generated_job(database_url, storage_root, [("dunes", "d")], n=1)
    (storage_root / gen.prefix / "images/00000000_0.png").write_bytes(header_only_png(9000, 9000))
    output = client.get(f"/ui/thumbs/{gen.id}/images/00000000_0.png")
    assert output.status_code == 422 and output.json()["error"]["field"] == "key"
    assert "over the 16,777,216-pixel limit" in output.json()["error"]["message"]


def test_the_thumbnail_limit_is_the_setting(client, set_env, database_url, storage_root):
    job = generated_job(database_url, storage_root, [("balloon", "a balloon")], n=1)
    (storage_root / job.prefix / "images/00000000_0.png").write_bytes(
        png(paint("balloon", 5, size=300))
    )
    url = f"/ui/thumbs/{job.id}/images/00000000_0.png"
    set_env(max_image_pixels="80000")  # 300x300 = 90,000 pixels
    refused = client.get(url, params={"size": 64})
    assert refused.status_code == 422
    assert "300x300 = 90,000 pixels, over the 80,000-pixel limit" in refused.text
    set_env(max_image_pixels="90000")
    assert client.get(url, params={"size": 64}).status_code == 200


def test_input_thumbnails_of_dataset_items_read_the_member_alone(
    client, database_url, storage_root, monkeypatch
):
    monkeypatch.setattr(thumbs, "MAX_SOURCE_BYTES", 50_000)
    image = png(paint("mountains", 3, size=64))
    shard = make_shard([sample("pad", txt="p" * 200_000), sample("k1", jpg=image)])
    key = "inputs/local/0456/shard.tar"
    (storage_root / key).parent.mkdir(parents=True)
    (storage_root / key).write_bytes(shard)
    offset = shard.index(image)
    big = "inputs/local/0789/big.png"
    (storage_root / big).parent.mkdir(parents=True)
    (storage_root / big).write_bytes(png(paint("dunes", 1, size=64)) + bytes(60_000))
    items = [
        ItemSpec(
            {"image": "file_s#k1.jpg", "uri": f"storage:{key}", "range": [offset, len(image)]}
        ),
        ItemSpec(
            {
                "image": "file_p#row=1",
                "uri": "storage:inputs/local/1/d.parquet",
                "parquet": [0, 0, "image"],
            }
        ),
        ItemSpec({"image": "file_b", "uri": f"storage:{big}"}),
    ]
    job = insert_job(database_url, "caption", items)
    ok = client.get(f"/ui/inputs/{job.id}/0", params={"size": 64})  # the shard is 4x the limit
    assert ok.status_code == 200, ok.text
    assert max(decode(ok.content).size) <= 64
    cell = client.get(f"/ui/inputs/{job.id}/1")
    assert cell.status_code == 404 and "no preview" in cell.json()["error"]["message"]
    too_big = client.get(f"/ui/inputs/{job.id}/2")  # refused by its size, before reading
    assert too_big.status_code == 422
    assert too_big.json()["error"]["message"].startswith("input 2 is too large to preview (")
