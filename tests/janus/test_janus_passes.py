"""The pass-level API the worker's pipeline uses: prepare on any thread, run_pass over units
of one kind and shape, decode; the same outputs as the whole-request calls."""

from __future__ import annotations

import pytest

from janus import CaptionRequest, GenerateRequest, JanusEngine, JanusRequestError
from tests.janus.helpers import pattern_image


def test_prepare_run_pass_and_decode_match_caption_and_generate(engine: JanusEngine) -> None:
    captions = [
        CaptionRequest(image=pattern_image(i), question="What is it?", max_new_tokens=6, seed=i)
        for i in range(3)
    ]
    units = [unit for request in captions for unit in engine.prepare(request)]
    assert [engine.unit_rows(u) for u in units] == [1, 1, 1]
    texts = engine.run_pass(units)
    assert texts == [r.text for r in engine.caption(captions)]

    request = GenerateRequest(prompt="a red fox", n=2, seed=5, cfg_weight=3.0)
    image_units = engine.prepare(request)
    assert [engine.unit_rows(u) for u in image_units] == [2, 2]  # guided: two rows each
    tokens = engine.run_pass(image_units)
    [alone] = engine.generate([request])
    assert [engine.decode(t).tobytes() for t in tokens] == [
        image.image.tobytes() for image in alone.images
    ]


def test_a_pass_refuses_mixed_kinds_shapes_or_too_many_rows(engine: JanusEngine) -> None:
    caption = engine.prepare(CaptionRequest(image=pattern_image(1), question="?", seed=1))
    image = engine.prepare(GenerateRequest(prompt="a fox", n=1, seed=1, cfg_weight=3.0))
    with pytest.raises(JanusRequestError, match="one kind"):
        engine.run_pass([*caption, *image])
    many = engine.prepare(
        GenerateRequest(prompt="a fox", n=engine.max_batch_rows, seed=1, cfg_weight=3.0)
    )
    with pytest.raises(JanusRequestError, match="rows"):
        engine.run_pass(many)
