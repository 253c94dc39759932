import pytest

from janus import GeneratedImage, GenerateRequest, GenerateResult, derive_seed
from janus.errors import JanusRequestError

from .helpers import png_bytes

PROMPTS = [
    "A red fox sitting in the snow",
    "a lighthouse",
    "A cat sleeping on a wooden table next to a cup of coffee",
    "robot",
    "Two dogs running on a beach, waves in the background, golden hour light",
    "fruit",
    "An astronaut riding a horse on the moon",
    "city at night",
    "a small house with a green door",
    "portrait of an old man",
    "sunflowers",
    "a bowl of ramen",
    "a stone bridge",
    "a train station",
    "a sailing boat at sunrise",
    "mountains",
]


def neighbours(count: int) -> list[GenerateRequest]:
    """Different prompts and parameters: sampled, greedy, guided, unguided, top-k, top-p."""
    return [
        GenerateRequest(
            PROMPTS[i % len(PROMPTS)],
            n=1 + i % 2,
            cfg_weight=[5.0, 1.0, 3.0, 7.5][i % 4],
            temperature=[1.0, 0.0, 0.7, 1.3][i % 4],
            top_k=[None, 20, None, 50][i % 4],
            top_p=[None, None, 0.9, 0.95][i % 4],
            seed=100 + i,
        )
        for i in range(count)
    ]


def tokens_of(result: GenerateResult) -> list[tuple[int, ...]]:
    assert result.ok, result.error
    return [image.tokens for image in result.images]


def test_alone_equals_inside_a_batch_of_16_different_requests(engine):
    target = GenerateRequest(
        "A watercolor painting of a lighthouse at dusk",
        n=3,
        cfg_weight=4.0,
        temperature=1.0,
        top_k=60,
        seed=42,
    )
    alone = engine.generate([target])[0]
    others = neighbours(15)
    for position in (0, 7, 15):
        batch = engine.generate([*others[:position], target, *others[position:]])
        assert len(batch) == 16
        inside = batch[position]
        assert tokens_of(inside) == tokens_of(alone)
        assert [png_bytes(i.image) for i in inside.images] == [
            png_bytes(i.image) for i in alone.images
        ]


def test_image_k_is_regenerated_alone_from_its_recorded_seed(engine):
    request = GenerateRequest(
        "a red fox", n=4, cfg_weight=5.0, temperature=1.0, top_p=0.95, seed=2024
    )
    result = engine.generate([request])[0]
    assert [i.index for i in result.images] == [0, 1, 2, 3]
    assert [i.seed for i in result.images] == [derive_seed(2024, k) for k in range(4)]
    assert result.images[0].seed == 2024
    for image in result.images:
        again = engine.generate(
            [
                GenerateRequest(
                    "a red fox", n=1, cfg_weight=5.0, temperature=1.0, top_p=0.95, seed=image.seed
                )
            ]
        )[0].images[0]
        assert again.tokens == image.tokens and again.seed == image.seed and again.index == 0
        assert png_bytes(again.image) == png_bytes(image.image)
    assert len({i.tokens for i in result.images}) == 4


def test_same_seed_same_images_different_seed_different_images(engine):
    request = GenerateRequest("two dogs on a beach", n=2, seed=5)
    first, second = engine.generate([request, request])
    assert tokens_of(first) == tokens_of(second)
    assert [png_bytes(i.image) for i in first.images] == [png_bytes(i.image) for i in second.images]
    other = engine.generate([GenerateRequest("two dogs on a beach", n=2, seed=6)])[0]
    assert tokens_of(other)[0] != tokens_of(first)[0] and tokens_of(other)[1] != tokens_of(first)[1]


def test_prompts_change_the_image(engine):
    results = engine.generate([GenerateRequest(p, temperature=0.0) for p in PROMPTS[:4]])
    assert len({tokens_of(r)[0] for r in results}) == 4


def test_greedy_ignores_the_seed_and_top_k_1_equals_greedy(engine):
    greedy = [
        engine.generate([GenerateRequest("robot", temperature=0.0, seed=s)])[0] for s in (1, 2)
    ]
    assert tokens_of(greedy[0]) == tokens_of(greedy[1])
    top1 = engine.generate([GenerateRequest("robot", temperature=1.0, top_k=1, seed=3)])[0]
    tiny_p = engine.generate([GenerateRequest("robot", temperature=1.0, top_p=1e-9, seed=4)])[0]
    assert tokens_of(top1) == tokens_of(greedy[0]) == tokens_of(tiny_p)
    sampled = engine.generate([GenerateRequest("robot", temperature=1.0, seed=3)])[0]
    assert tokens_of(sampled) != tokens_of(greedy[0])


def test_cfg_weight_1_needs_one_row_per_image(make_engine):
    small, passes = make_engine(4)
    unguided = small.generate([GenerateRequest("robot", n=4, cfg_weight=1.0, seed=1)])[0]
    assert passes == [("generate", 4, 4)]
    guided = small.generate([GenerateRequest("robot", n=4, cfg_weight=5.0, seed=1)])[0]
    assert passes[1:] == [("generate", 2, 4), ("generate", 2, 4)]
    assert len(unguided.images) == len(guided.images) == 4
    assert tokens_of(unguided) != tokens_of(guided)


def test_large_n_is_split_and_requests_are_packed(make_engine, engine):
    small, passes = make_engine(6)
    requests = [
        GenerateRequest("a lighthouse", n=5, seed=1),
        GenerateRequest("fruit", n=1, cfg_weight=1.0, seed=3),
        GenerateRequest("robot", n=1, cfg_weight=1.0, seed=2),
    ]
    results = small.generate(requests)
    # 5 guided images (10 rows) split over two passes; the two unguided images (1 row each)
    # fill the second pass
    assert passes == [("generate", 3, 6), ("generate", 4, 6)]
    assert [len(r.images) for r in results] == [5, 1, 1]
    assert [i.index for i in results[0].images] == [0, 1, 2, 3, 4]
    assert [tokens_of(r) for r in results] == [tokens_of(r) for r in engine.generate(requests)]


def test_prompt_length_buckets_run_in_separate_passes(make_engine):
    small, passes = make_engine(16)
    long_prompt = " ".join(PROMPTS)
    results = small.generate(
        [
            GenerateRequest("robot", seed=1),
            GenerateRequest(long_prompt, seed=2),
            GenerateRequest("fruit", seed=3),
        ]
    )
    assert all(r.ok for r in results)
    assert sorted(passes) == [("generate", 1, 2), ("generate", 2, 4)]


def test_results_are_pil_images_of_the_decoded_size(engine):
    result = engine.generate([GenerateRequest("fruit", n=2, seed=9)])[0]
    assert isinstance(result, GenerateResult) and result.ok and result.error is None
    for image in result.images:
        assert isinstance(image, GeneratedImage)
        assert image.image.mode == "RGB" and image.image.size == (64, 64)
        assert len(image.tokens) == 16 and all(0 <= t < 128 for t in image.tokens)


def test_invalid_requests_are_rejected_on_creation():
    for bad in (
        {"n": 0},
        {"temperature": -0.1},
        {"top_k": 0},
        {"top_p": 0.0},
        {"seed": -5},
        {"cfg_weight": float("nan")},
        {"n": 1.5},
    ):
        with pytest.raises(JanusRequestError):
            GenerateRequest("x", **bad)


def test_the_layer_loop_matches_the_models_own_forward(engine, monkeypatch):
    import janus.decoder

    requests = neighbours(4)
    fast = engine.generate(requests)
    monkeypatch.setattr(janus.decoder, "LAYER_LOOP", False)
    slow = engine.generate(requests)
    assert [tokens_of(r) for r in fast] == [tokens_of(r) for r in slow]
