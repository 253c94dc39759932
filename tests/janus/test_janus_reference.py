"""Greedy outputs equal those of transformers' own `generate` on the same checkpoint."""

import torch

from janus import CaptionRequest, GenerateRequest

from .helpers import pattern_image

IMAGE_PROMPTS = [
    "A red fox",
    "A close-up high-contrast photo of a city at night, under a blue sky of yellow stars",
    "robot",
    "Two dogs running on a beach",
]


def chat(processor, content):
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )


def test_image_tokens_equal_transformers_generate(engine, reference):
    model, processor = reference
    prompts = [chat(processor, [{"type": "text", "text": p}]) for p in IMAGE_PROMPTS]
    inputs = processor(text=prompts, generation_mode="image", padding=True, return_tensors="pt")
    assert len(set(inputs["attention_mask"].sum(-1).tolist())) == len(prompts), (
        "want different lengths"
    )
    with torch.inference_mode():
        expected = model.generate(
            **inputs, generation_mode="image", do_sample=False, guidance_scale=5.0
        )
    results = engine.generate(
        [GenerateRequest(p, cfg_weight=5.0, temperature=0.0) for p in IMAGE_PROMPTS]
    )
    assert [r.images[0].tokens for r in results] == [tuple(row) for row in expected.tolist()]


def test_captions_equal_transformers_generate(engine, reference):
    model, processor = reference
    questions = [
        "Describe this image.",
        "What is in this picture? Answer in one long sentence.",
        "Describe",
    ]
    images = [pattern_image(30 + i, (40 + 20 * i, 60)) for i in range(3)]
    prompts = [chat(processor, [{"type": "image"}, {"type": "text", "text": q}]) for q in questions]
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    eos = model.generation_config.eos_token_id
    expected = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        row = row[: row.index(eos)] if eos in row else row
        text = processor.tokenizer.decode(row, skip_special_tokens=True)
        # The engine drops the U+FFFD left when max_new_tokens cuts a multi-byte character.
        expected.append(text.strip().rstrip("\ufffd").rstrip())
    results = engine.caption(
        [CaptionRequest(im, q, max_new_tokens=12) for im, q in zip(images, questions, strict=True)]
    )
    assert [r.text for r in results] == expected
    assert all(len(text) > 0 for text in expected)
