"""A tiny open_clip image-text model, trained in seconds on images made here, for tests.

Tests of the image-text path (zero-shot heads, search by text) need a model whose image and
text towers really agree, and the test machines have no network to fetch one. So this module
draws small pictures of one coloured shape each ("a red circle", "a blue square"), trains a
tiny CLIP on them with the standard contrastive loss for a few seconds on the CPU, and saves
it the way open_clip users supply their own weights: a model configuration (JSON, registered
with ``open_clip.add_model_config``) and a checkpoint holding the whole model's state dict.
The same folder is also an open_clip ``local-dir:`` model (``open_clip_config.json`` next to
``open_clip_model.safetensors``), the layout of a Hugging Face snapshot.

Everything is seeded: the same seed gives the same pictures and, on the same machine, the same
weights (training runs on one thread, so the core count does not matter); the caller's random
state and thread count are left as found.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")

# Class names, as folder names too: "red circle". A space is a valid folder name, and it keeps
# the label a plain phrase, so a zero-shot head's prompts ("a photo of a {}.") read naturally.
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

# Caption wordings seen in training: a few, so the text tower learns the colour and shape words
# rather than one exact string, and prompts like the ImageNet templates still land nearby.
TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a picture of a {colour} {shape}.",
    "a drawing of a {colour} {shape}",
    "a {colour} {shape} on a grey background",
    "a {shape} that is {colour}",
)

# Mean RGB per colour; each picture jitters it so colour is a range, not one value.
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 50),
    "blue": (40, 70, 215),
    "yellow": (225, 200, 30),
}

CONFIG_NAME = "headstart-tiny-clip"
IMAGE_SIZE = 32
STEPS = 150  # about 14 s on two shared cores; 100 already gave 0.98 zero-shot accuracy

# The architecture. The image tower is open_clip's ModifiedResNet (the CLIP RN50 design: conv
# stages, then attention pooling), at width 16 with one block per stage: on these pictures it
# learns shape within 150 steps for every seed tried, where tiny ViTs (patch 8 or 4, 32 or 48
# px, 2-3 layers) needed twice the steps and time and still missed shapes for some seeds. The
# text side keeps open_clip's own tokenizer (SimpleTokenizer ships with the package, so it works
# offline), hence its full 49408-token vocabulary; 16 tokens of context fit every caption here.
MODEL_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": [1, 1, 1, 1],
        "width": 16,
        "head_width": 16,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}


def caption(colour: str, shape: str, template: str = TEMPLATES[0]) -> str:
    """The caption of one picture: "a red circle" by default, or another wording."""
    return template.format(colour=colour, shape=shape)


def make_image(
    colour: str, shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE
) -> Image.Image:
    """One RGB picture: a ``colour`` ``shape`` of random size and place on a light, noisy
    background. The noise, jittered colours and varied backgrounds mean a model must see the
    shape and the colour, not memorise pixels."""
    background = rng.uniform(190, 250) + rng.uniform(-12, 12, size=3)
    pixels = background + rng.normal(0, 10, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    fill = tuple(int(v) for v in np.clip(np.array(_RGB[colour]) + rng.integers(-25, 26, 3), 0, 255))
    extent = rng.uniform(0.4, 0.75) * size  # the shape's width and height, in pixels
    x0, y0 = rng.uniform(0, size - extent, size=2)
    x1, y1 = x0 + extent, y0 + extent
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return image


def write_images(folder: Path, per_class: int, seed: int) -> dict[str, list[Path]]:
    """Write ``per_class`` PNG pictures of every class to ``folder/<class>/NNN.png`` (class
    folders like ``red circle``, the layout headstart reads labels from); returns the paths of
    each class. A seed other than the training one gives held-out pictures."""
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for colour in COLOURS:
        for shape in SHAPES:
            name = f"{colour} {shape}"
            (folder / name).mkdir(parents=True, exist_ok=True)
            paths = []
            for i in range(per_class):
                path = folder / name / f"{i:03d}.png"
                make_image(colour, shape, rng).save(path)
                paths.append(path)
            written[name] = paths
    return written


@dataclass(frozen=True)
class TinyClip:
    """Where a trained tiny CLIP lies. Load it as a user would, either by name::

        open_clip.add_model_config(tiny.config_dir)
        model = open_clip.create_model(tiny.config_name, pretrained=str(tiny.checkpoint))

    or as ``open_clip.create_model(f"local-dir:{tiny.config_dir}")``."""

    config_name: str
    config_dir: Path
    checkpoint: Path
    image_size: int
    steps: int  # optimiser steps taken: fewer than asked only if the time budget ran out
    seconds: float  # training time


# Every (colour, shape, wording) caption, tokenised once; a batch picks rows by index.
_CAPTIONS: tuple[tuple[str, str, str], ...] = tuple(
    (c, s, t) for c in COLOURS for s in SHAPES for t in TEMPLATES
)


def _batch(
    rng: np.random.Generator,
    batch_size: int,
    tokens: torch.Tensor,
    preprocess: Callable[[Image.Image], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh pictures, each with one of its captions: unlimited data, so no overfitting. The
    pictures go through the model's own preprocessing, as held-out files will."""
    picks = rng.integers(len(_CAPTIONS), size=batch_size)
    images = [preprocess(make_image(*_CAPTIONS[i][:2], rng)) for i in picks]
    return torch.stack(images), tokens[torch.from_numpy(picks)]


def train_tiny_clip(
    out_dir: Path,
    *,
    steps: int = STEPS,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> TinyClip:
    """Train the tiny CLIP for ``steps`` steps on fresh pictures and save it in ``out_dir``.

    Always all the steps, whatever the machine's speed, so the weights depend only on the seed
    (about 15 s on two cores)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{CONFIG_NAME}.json").write_text(json.dumps(MODEL_CONFIG, indent=2))
    open_clip.add_model_config(out_dir)

    started = time.perf_counter()
    threads = torch.get_num_threads()
    done = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # One thread: the model is too small to gain from more, and on a shared CPU extra
        # threads wait on each other (measured: steps 10x slower with 2 threads on 2 busy
        # cores). It also makes the weights independent of the machine's core count.
        torch.set_num_threads(1)
        try:
            model = open_clip.create_model(CONFIG_NAME)
            preprocess_cfg = PreprocessCfg(**model.visual.preprocess_cfg)
            preprocess = image_transform_v2(preprocess_cfg, is_train=False)
            tokenizer = open_clip.get_tokenizer(CONFIG_NAME)
            tokens = tokenizer([caption(c, s, t) for c, s, t in _CAPTIONS])
            rng = np.random.default_rng(seed)
            loss_fn = open_clip.ClipLoss()
            optimiser = _adamw(model, lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _warmup_cosine(steps))
            model.train()
            while done < steps:
                images, texts = _batch(rng, batch_size, tokens, preprocess)
                image_features, text_features, logit_scale = model(images, texts)
                loss = loss_fn(image_features, text_features, logit_scale)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                done += 1
        finally:
            torch.set_num_threads(threads)
    model.eval()

    checkpoint = _save_state_dict(model, out_dir)
    local_dir = {"model_cfg": MODEL_CONFIG, "preprocess_cfg": _preprocess_dict(preprocess_cfg)}
    (out_dir / "open_clip_config.json").write_text(json.dumps(local_dir, indent=2))
    return TinyClip(
        config_name=CONFIG_NAME,
        config_dir=out_dir,
        checkpoint=checkpoint,
        image_size=IMAGE_SIZE,
        steps=done,
        seconds=time.perf_counter() - started,
    )


def _warmup_cosine(steps: int) -> Callable[[int], float]:
    """The learning-rate factor: a linear warm-up over a tenth of the steps, then a cosine
    decay to zero, so the last steps settle rather than jump."""
    warmup = max(1, steps // 10)
    return lambda i: (
        min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )


def _save_state_dict(model: torch.nn.Module, out_dir: Path) -> Path:
    """The whole model's state dict, as safetensors where installed (no pickle at all), else a
    plain ``torch.save`` of tensors that ``torch.load(weights_only=True)`` reads. Either name is
    one open_clip finds in a ``local-dir:`` folder."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        checkpoint = out_dir / "open_clip_pytorch_model.bin"
        torch.save(state, checkpoint)
    else:
        checkpoint = out_dir / "open_clip_model.safetensors"
        save_file(state, str(checkpoint))
    return checkpoint


def _adamw(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW, fused where this torch has it on the CPU (2.4 on): the unfused step over the
    49408-row token table costs as much as the forward and backward passes together."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def _preprocess_dict(cfg: object) -> dict:
    """open_clip's PreprocessCfg as JSON: mean, std, size, interpolation, resize mode."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
