"""Benchmark of the janus runtime on the tiny 384x384 checkpoint (CPU, offline, about 30-60 s).

    PYTHONPATH=. python bench/engine.py [--threads 1] [--prompts 16] [--repeats 3]

Measures, in one run, against baselines measured in the same run:
  (a) image-token generation for 16 different prompts: the upstream way (deepseek-ai/Janus
      generation_inference.py: one prompt per call, parallel_size 1, plain past_key_values,
      one global torch.manual_seed, CFG rows interleaved cond/uncond, 576 steps) vs
      JanusEngine.generate_tokens packing all 16 guided images (32 rows, max_batch_rows=32)
      into one pass;
  (b) VQ decode time per 384x384 image (engine.generate = (a) + one decode per image);
  (c) 16 greedy captions one at a time (transformers `model.generate`, one image per call)
      vs JanusEngine.caption batching them (max_batch_rows=16), at 32 and 128 new tokens;
  (d) peak RSS of the process.
Each timing is the best of --repeats runs after one warm-up run (wall clock); CPU seconds of
the same run are shown too, since other processes on a small shared machine make wall-clock
ratios noisy.
Torch threads are set explicitly (default 1: on a 2-core machine shared with other work a
second thread makes each small op wait for a busy core; pass --threads 2 on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import transformers
from PIL import Image

from janus import CaptionRequest, GenerateRequest, JanusEngine, make_tiny_checkpoint
from janus.generate import decode_image
from janus.prompts import image_prompt_ids

PROMPTS = [
    "A red fox sitting in the snow",
    "A watercolor painting of a lighthouse at dusk",
    "A close-up photo of a city at night, under a blue sky of yellow stars",
    "A cat sleeping on a wooden table next to a cup of coffee",
    "Two dogs running on a beach, golden hour",
    "An astronaut riding a horse on the moon, digital art, highly detailed",
    "A bowl of fresh fruit on a white plate",
    "A mountain landscape with green trees, a river and clouds",
    "A small house with a green door and a garden of flowers",
    "A black and white portrait of an old man with a hat",
    "A robot reading a newspaper in a cafe, cinematic lighting",
    "Sunflowers",
    "A stone bridge over a river in autumn, oil painting",
    "A futuristic train station full of people",
    "A bowl of ramen, top view",
    "A sailing boat on a calm sea at sunrise, soft pastel colors",
]


def upstream_generate(
    engine: JanusEngine, prompt: str, cfg_weight: float = 5.0, temperature: float = 1.0
) -> torch.Tensor:
    """One prompt, parallel_size 1: the loop of deepseek-ai/Janus generation_inference.py."""
    model, tokens = engine.model, engine.tokens
    input_ids = image_prompt_ids(engine.processor, prompt)
    rows = torch.zeros((2, len(input_ids)), dtype=torch.long)
    rows[0] = input_ids
    rows[1] = input_ids
    rows[1, 1:-1] = tokens.pad
    inputs_embeds = model.get_input_embeddings()(rows)
    generated = torch.zeros((1, tokens.num_image_tokens), dtype=torch.long)
    past = None
    for i in range(tokens.num_image_tokens):
        outputs = model.model.language_model(
            inputs_embeds=inputs_embeds, use_cache=True, past_key_values=past
        )
        past = outputs.past_key_values
        logits = model.model.generation_head(outputs.last_hidden_state[:, -1, :])
        cond, uncond = logits[0::2, :], logits[1::2, :]
        logits = uncond + cfg_weight * (cond - uncond)
        probs = torch.softmax(logits / temperature, dim=-1)
        next_token = torch.multinomial(probs, num_samples=1)
        generated[:, i] = next_token.squeeze(dim=-1)
        next_token = torch.cat([next_token.unsqueeze(dim=1), next_token.unsqueeze(dim=1)], dim=1)
        embeds = model.prepare_embeddings_for_image_generation(next_token.view(-1))
        inputs_embeds = embeds.unsqueeze(dim=1)
    return generated


def best_of(repeats: int, function, *args):
    """(value, wall seconds, cpu seconds) of the fastest of `repeats` runs after a warm-up run."""
    best = None
    function(*args)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = function(*args)
        run = (value, time.perf_counter() - wall, time.process_time() - cpu)
        if best is None or run[1] < best[1]:
            best = run
    return best


def caption_images(count: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shape = [(size - 7 * i, size, 3) for i in range(count)]
    return [Image.fromarray(rng.integers(0, 256, s, dtype=np.uint8)) for s in shape]


def bench_generation(engine: JanusEngine, prompts: list[str], repeats: int) -> dict:
    def upstream() -> list[torch.Tensor]:
        torch.manual_seed(0)  # one global seed, as upstream
        with torch.inference_mode():
            return [upstream_generate(engine, p) for p in prompts]

    requests = [GenerateRequest(p, seed=i) for i, p in enumerate(prompts)]
    passes = engine.forward_passes
    _, up_wall, up_cpu = best_of(repeats, upstream)
    tokens, wall, cpu = best_of(repeats, engine.generate_tokens, requests)
    passes = (engine.forward_passes - passes) // repeats
    with torch.inference_mode():
        _, decode_wall, _ = best_of(
            1, lambda: [decode_image(engine.model, t[0]) for t in tokens[:4]]
        )
    return {
        "upstream": (up_wall, up_cpu),
        "packed": (wall, cpu),
        "passes": passes,
        "decode": decode_wall / 4,
    }


def bench_captions(
    engine: JanusEngine, images: list[Image.Image], new_tokens: int, repeats: int
) -> dict:
    model, processor = engine.model, engine.processor
    question = "Describe this image."
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    eos = engine.tokens.eos

    def one_at_a_time() -> list[str]:
        texts = []
        with torch.inference_mode():
            for image in images:
                inputs = processor(text=[prompt], images=[image], return_tensors="pt")
                out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
                ids = [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t != eos]
                texts.append(processor.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return texts

    requests = [CaptionRequest(image, question, max_new_tokens=new_tokens) for image in images]
    expected, single_wall, single_cpu = best_of(repeats, one_at_a_time)
    results, wall, cpu = best_of(repeats, engine.caption, requests)
    same = sum(r.text == e for r, e in zip(results, expected, strict=True))
    return {"single": (single_wall, single_cpu), "batched": (wall, cpu), "same": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts / captions (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the baseline's generate() warns per call
    n = args.prompts
    prompts = (PROMPTS * (n // len(PROMPTS) + 1))[:n]
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        path = make_tiny_checkpoint(os.path.join(directory, "tiny384"), image_size=384)
        engine = JanusEngine.load(str(path), device="cpu", dtype="float32", max_batch_rows=2 * n)
        setup = time.perf_counter() - started
        generation = bench_generation(engine, prompts, args.repeats)
        engine.max_batch_rows = n
        images = caption_images(n, 384)
        captions = {k: bench_captions(engine, images, k, args.repeats) for k in (32, 128)}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ratio(pair: dict, slow: str, fast: str) -> tuple[float, float]:
        return pair[slow][0] / pair[fast][0], pair[slow][1] / pair[fast][1]

    gen_ratio = ratio(generation, "upstream", "packed")
    rows = [
        ("setup: build + load tiny 384 checkpoint", f"{setup:.2f} s", ""),
        (
            "(a) upstream way, 1 prompt per call",
            f"{n / generation['upstream'][0]:.2f} img/s",
            f"{generation['upstream'][0]:.2f} s wall, {generation['upstream'][1]:.2f} s cpu",
        ),
        (
            "(a) engine, packed",
            f"{n / generation['packed'][0]:.2f} img/s",
            (
                f"{generation['packed'][0]:.2f} s wall, {generation['packed'][1]:.2f} s cpu, "
                f"{generation['passes']} pass of {2 * n} rows"
            ),
        ),
        ("(a) speed-up (target >= 5x)", f"{gen_ratio[0]:.1f}x", f"{gen_ratio[1]:.1f}x on cpu time"),
        ("(b) VQ decode per 384x384 image", f"{generation['decode'] * 1000:.0f} ms", ""),
    ]
    for tokens, result in captions.items():
        cap_ratio = ratio(result, "single", "batched")
        rows += [
            (
                f"(c) {tokens} new tokens, one at a time",
                f"{n / result['single'][0]:.2f} cap/s",
                f"{result['single'][0]:.2f} s wall, {result['single'][1]:.2f} s cpu",
            ),
            (
                f"(c) {tokens} new tokens, batched",
                f"{n / result['batched'][0]:.2f} cap/s",
                (
                    f"{result['batched'][0]:.2f} s wall, {result['batched'][1]:.2f} s cpu, "
                    f"{result['same']}/{n} texts equal"
                ),
            ),
            (
                f"(c) {tokens} new tokens speed-up (target >= 2.5x)",
                f"{cap_ratio[0]:.1f}x",
                f"{cap_ratio[1]:.1f}x on cpu time",
            ),
        ]
    rows.append(("(d) peak RSS", f"{peak_mb:.0f} MB", ""))
    width = max(len(r[0]) for r in rows)
    print(
        f"janus engine bench: torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch thread(s), best of {args.repeats}"
    )
    for label, value, note in rows:
        print(f"  {label:<{width}}  {value:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
