import pytest

from janus import CaptionRequest, CaptionResult, JanusError
from janus.errors import JanusRequestError

from .helpers import pattern_image

QUESTIONS = [
    "Describe this image.",
    "What is in this picture?",
    "Describe this image in one sentence.",
    "Is there a cat?",
    "Describe",
]


def requests_for(count: int, **params) -> list[CaptionRequest]:
    return [
        CaptionRequest(
            pattern_image(i, (40 + 9 * i, 64 - 5 * i)), QUESTIONS[i % len(QUESTIONS)], **params
        )
        for i in range(count)
    ]


def test_batch_equals_alone_in_request_order(engine):
    requests = requests_for(5, max_new_tokens=10)
    alone = [engine.caption([request])[0] for request in requests]
    batch = engine.caption(requests)
    assert all(isinstance(r, CaptionResult) and r.ok for r in batch)
    assert [r.text for r in batch] == [r.text for r in alone]
    reversed_batch = engine.caption(requests[::-1])
    assert [r.text for r in reversed_batch] == [r.text for r in alone][::-1]
    assert len({r.text for r in batch}) == len(batch), "captions should depend on the image"


def test_captions_differ_between_images_with_the_same_question(engine):
    texts = [
        r.text
        for r in engine.caption(
            [CaptionRequest(pattern_image(seed), max_new_tokens=8) for seed in (20, 21, 22)]
        )
    ]
    assert len(set(texts)) == 3


def test_sampling_is_per_row_and_reproducible(engine):
    sampled = CaptionRequest(
        pattern_image(7), max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3
    )
    first = engine.caption([sampled])[0].text
    assert engine.caption([sampled])[0].text == first
    neighbours = requests_for(4, max_new_tokens=12, temperature=1.2, seed=9)
    assert engine.caption([*neighbours[:2], sampled, *neighbours[2:]])[2].text == first
    other_seeds = {
        engine.caption(
            [CaptionRequest(sampled.image, max_new_tokens=12, temperature=0.9, top_p=0.9, seed=s)]
        )[0].text
        for s in (4, 5, 6)
    }
    assert other_seeds - {first}
    greedy = engine.caption([CaptionRequest(sampled.image, max_new_tokens=12)])[0].text
    assert (
        engine.caption([CaptionRequest(sampled.image, max_new_tokens=12, seed=99)])[0].text
        == greedy
    )


def test_max_batch_rows_splits_into_passes(make_engine, engine):
    small, passes = make_engine(2)
    requests = requests_for(5, max_new_tokens=6)
    results = small.caption(requests)
    assert passes == [("caption", 2, 2), ("caption", 2, 2), ("caption", 1, 1)]
    assert [r.text for r in results] == [r.text for r in engine.caption(requests)]


def test_max_new_tokens_bounds_the_caption(engine):
    short, longer = engine.caption(
        [CaptionRequest(pattern_image(8), max_new_tokens=n) for n in (2, 30)]
    )
    assert len(short.text) < len(longer.text)


def test_invalid_requests_are_rejected_on_creation(engine):
    image = pattern_image(0)
    for bad in (
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"seed": -1},
        {"seed": 2**63},
        {"question": None},
    ):
        with pytest.raises(JanusRequestError):
            CaptionRequest(image, **bad)
    with pytest.raises(JanusError):
        engine.caption(["not a request"])
    assert engine.caption([]) == []


def test_caption_text_drops_a_cut_multibyte_character() -> None:
    from janus.caption import _text

    assert _text("  a caf\ufffd") == "a caf"
    assert _text("plain ") == "plain"
    assert _text("\ufffd") == ""
