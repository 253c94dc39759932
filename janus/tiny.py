"""A tiny random Janus checkpoint (same architecture, small sizes) for tests and offline runs.

`make_tiny_checkpoint(directory)` writes a transformers-format checkpoint (model, processor,
generation config) that `JanusEngine.load(directory)` loads like a real one. Its tokenizer is
a byte-level BPE trained offline on a small built-in corpus with the Janus special tokens.
"""

from __future__ import annotations

import logging
import math
import pathlib

import torch

from . import hf_adapter

logger = logging.getLogger(__name__)

# DeepSeek's own spellings: FULLWIDTH VERTICAL LINE (U+FF5C) and LOWER ONE EIGHTH BLOCK (U+2581).
BOS_TOKEN = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS_TOKEN = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD_TOKEN = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE_TOKENS = {
    "image_token": "<image_placeholder>",
    "boi_token": "<begin_of_image>",
    "eoi_token": "<end_of_image>",
}
SPECIAL_TOKENS = [
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    *IMAGE_TOKENS.values(),
    "<|User|>",
    "<|Assistant|>",
]

# The chat template of deepseek-community/Janus-Pro-*: "<|User|>: ...\n\n<|Assistant|>:".
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','" + EOS_TOKEN + "']%}{%for message in messages%}"
    "{%if message['role']|lower=='user'%}<|User|>: "
    "{%elif message['role']|lower=='assistant'%}<|Assistant|>:{%if not (loop.last and not "
    "add_generation_prompt and message['content'][0]['type']=='text' and "
    "message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}{{message['role'].capitalize()}}: {%endif%}"
    "{%for content in message['content']%}{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}<image_placeholder>{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}"
    "{%else%}{{text}}{%endif%}{%endif%}{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}{%if message['role']|lower=='user'%}"
    "{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

_CORPUS = """\
You are a helpful language and vision assistant. You are able to understand the visual content
that the user provides, and assist the user with a variety of tasks using natural language.
Describe this image. Describe this image in one sentence. What is in this picture?
A photo of a red fox sitting in the snow. A watercolor painting of a lighthouse at dusk.
A close-up high-contrast photo of a city at night, under a blue sky of yellow stars.
A cat sleeping on a wooden table next to a cup of coffee and an open book.
Two dogs running on a beach, waves in the background, golden hour light.
An astronaut riding a horse on the moon, digital art, highly detailed.
A bowl of fresh fruit: apples, oranges, bananas and grapes on a white plate.
The image shows a mountain landscape with green trees, a river and clouds.
There is a small house with a green door, a garden of flowers and a stone path.
A black and white portrait of an old man with a hat, smiling at the camera.
A robot reading a newspaper in a cafe, cinematic lighting, 4k, trending on artstation.
"""


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        extra_special_tokens=dict(IMAGE_TOKENS),
    )


def _build_config(tokenizer, image_size: int):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    patch_size = 16
    if image_size % patch_size or image_size < patch_size:
        raise ValueError(
            f"image_size must be a positive multiple of {patch_size}, got {image_size}"
        )
    hidden = 64
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden,
        depth=2,
        num_image_tokens=(image_size // patch_size) ** 2,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=128,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 2, 2, 4],
        num_res_blocks=1,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
        num_hidden_layers=2,
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        tie_word_embeddings=False,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["image_token"]),
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every matrix with a std large enough that outputs depend on the input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue
            is_table = "embed" in name or "quantize" in name  # embeddings and the VQ codebook
            std = 1.0 if is_table else 1.5 / math.sqrt(param[0].numel())
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_tiny_checkpoint(
    directory: str | pathlib.Path, image_size: int = 64, seed: int = 0
) -> pathlib.Path:
    """Write a tiny random Janus checkpoint to `directory` and return its path.

    image_size 64 gives 16 image tokens and 64x64 images (fast tests); 384 gives the real
    shape (576 tokens, 384x384 images). The same seed always gives the same weights.
    """
    from transformers import GenerationConfig, JanusForConditionalGeneration

    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=512)
    config = _build_config(tokenizer, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config).eval()
    _randomize(model, seed)
    boi_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["boi_token"])
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": boi_id},
    )
    processor = hf_adapter.janus_processor(
        hf_adapter.pil_image_processor(image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        tokenizer,
        chat_template=CHAT_TEMPLATE,
        num_image_tokens=config.vision_config.num_image_tokens,
    )
    with hf_adapter.quiet_progress_bars():
        model.save_pretrained(path)
        processor.save_pretrained(path)
    logger.info(
        "tiny Janus checkpoint (image_size=%d, seed=%d) written to %s", image_size, seed, path
    )
    return path
