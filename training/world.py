"""A procedurally drawn, captioned image world for training a tiny text-to-image model that follows its words.

Every scene is a sky over a ground, with one to three objects of one colour and
one shape. The speaker's emotion sets the palette and the light, as the served
prompt composer words it: the caption is the ``photo`` style template's prompt
for that emotion around a spoken-style text (``"two red circles"``), so training
captions look exactly like what the pipeline sends to the diffusion stage.

Colours of objects are saturated and every emotion's sky and ground are not, so a
detector (:mod:`s2i.training.world_detector`) can read the drawn content back.

Held-out captions: a few ``(colour, shape)`` pairs never occur in training (each
colour and each shape still does, with other partners); evaluation captions use
only those pairs, so the faithfulness measured on them is compositional.

Everything is deterministic from a seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)

IMAGE_SIZE = 32
# The horizon: rows above it are sky, rows from it on are ground.
HORIZON = 20
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "yellow": (240, 210, 30),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "purple": (160, 50, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
PLURALS = {shape: shape + "s" for shape in SHAPES}
# Held out of training: one pair per shape, each with a different colour.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("yellow", "circle"),
    ("blue", "diamond"),
    ("purple", "square"),
)


@dataclasses.dataclass(frozen=True)
class Palette:
    """An emotion's light: sky and ground colours (desaturated) and how bright the objects are lit."""

    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    light: float


# One palette per RAVDESS emotion, following the `photo` template's words (happy: bright
# sunshine; sad: overcast, muted blue; angry: red light; calm: pastel; fearful: dark ...).
PALETTES: dict[str, Palette] = {
    "neutral": Palette(sky=(160, 180, 200), ground=(110, 125, 100), light=0.95),
    "calm": Palette(sky=(220, 205, 230), ground=(195, 220, 200), light=0.95),
    "happy": Palette(sky=(200, 225, 245), ground=(170, 200, 120), light=1.0),
    "sad": Palette(sky=(120, 128, 145), ground=(85, 92, 100), light=0.75),
    "angry": Palette(sky=(140, 95, 90), ground=(75, 50, 45), light=0.9),
    "fearful": Palette(sky=(45, 48, 62), ground=(25, 25, 30), light=0.7),
    "disgust": Palette(sky=(150, 155, 110), ground=(105, 100, 65), light=0.8),
    "surprised": Palette(sky=(245, 235, 200), ground=(200, 190, 150), light=1.0),
}
EMOTIONS = tuple(PALETTES)
# Object sizes (pixels) by count, so three objects still fit apart.
SIZES = {1: (11, 14), 2: (10, 12), 3: (9, 11)}
# Free pixels kept between two objects' boxes, so the detector sees them apart.
GAP = 2


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one image shows."""

    colour: str
    shape: str
    count: int
    emotion: str

    @property
    def text(self) -> str:
        """What a speaker would say: ``"two red circles"``."""
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun}"

    def caption(self, templates=None) -> str:
        """The prompt the served composer makes of :attr:`text` and :attr:`emotion` (default template)."""
        from s2i.pipeline.prompt import StyleTemplates, compose_prompt

        templates = templates or StyleTemplates.load()
        return compose_prompt(self.text, self.emotion, templates).prompt


def all_scenes() -> list[Scene]:
    """Every caption the world can say, in a fixed order."""
    return [
        Scene(colour, shape, count, emotion)
        for colour in COLOURS
        for shape in SHAPES
        for count in COUNT_WORDS
        for emotion in EMOTIONS
    ]


def is_held_out(scene: Scene) -> bool:
    """Whether ``scene``'s colour-shape pair is kept out of training."""
    return (scene.colour, scene.shape) in HELD_OUT_PAIRS


def split_scenes() -> tuple[list[Scene], list[Scene]]:
    """``(train, held_out)`` captions: disjoint, and no held-out colour-shape pair trains."""
    scenes = all_scenes()
    return [s for s in scenes if not is_held_out(s)], [s for s in scenes if is_held_out(s)]


def lit(colour: tuple[int, int, int], light: float) -> tuple[int, int, int]:
    """``colour`` under an emotion's light."""
    return tuple(int(round(channel * light)) for channel in colour)


def _boxes(count: int, rng: random.Random) -> list[tuple[int, int, int, int]]:
    """``count`` square boxes ``(left, top, right, bottom)`` inside the image, ``GAP`` apart."""
    low, high = SIZES[count]
    while True:
        boxes = []
        for _ in range(count):
            size = rng.randint(low, high)
            left, top = rng.randint(1, IMAGE_SIZE - size - 1), rng.randint(1, IMAGE_SIZE - size - 1)
            boxes.append((left, top, left + size - 1, top + size - 1))
        if all(_apart(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
            return boxes


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[2] + GAP < b[0] or b[2] + GAP < a[0] or a[3] + GAP < b[1] or b[3] + GAP < a[1]


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    left, top, right, bottom = box
    middle = (left + right) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(middle, top), (right, bottom), (left, bottom)], fill=fill)
    elif shape == "diamond":
        centre = (top + bottom) / 2
        draw.polygon([(middle, top), (right, centre), (middle, bottom), (left, centre)], fill=fill)
    else:
        raise ValueError(f"`shape` must be one of {list(SHAPES)}, got {shape!r}.")


def render(scene: Scene, seed: int) -> np.ndarray:
    """``scene`` drawn as ``uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]``; positions and sizes drawn from ``seed``."""
    from PIL import Image, ImageDraw

    if scene.emotion not in PALETTES:
        raise ValueError(f"`emotion` must be one of {list(EMOTIONS)}, got {scene.emotion!r}.")
    if scene.colour not in COLOURS:
        raise ValueError(f"`colour` must be one of {list(COLOURS)}, got {scene.colour!r}.")
    if scene.count not in COUNT_WORDS:
        raise ValueError(f"`count` must be one of {list(COUNT_WORDS)}, got {scene.count!r}.")
    palette = PALETTES[scene.emotion]
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), palette.sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, HORIZON, IMAGE_SIZE - 1, IMAGE_SIZE - 1), fill=palette.ground)
    rng = random.Random(f"{seed}/{scene}")
    for box in _boxes(scene.count, rng):
        _draw_shape(draw, scene.shape, box, lit(COLOURS[scene.colour], palette.light))
    return np.asarray(image, dtype=np.uint8)


def sample(scenes: list[Scene], n: int, seed: int) -> Iterator[tuple[int, Scene]]:
    """``n`` ``(image seed, scene)`` pairs cycling through a seeded shuffle of ``scenes``."""
    if not scenes:
        raise ValueError("`scenes` is empty.")
    rng = random.Random(seed)
    order: list[Scene] = []
    for index in range(n):
        if not order:
            order = list(scenes)
            rng.shuffle(order)
        yield seed * 1_000_003 + index, order.pop()


# Flickr8K layout names (see :mod:`s2i.training.diffusion_data`), so `s2i train diffusion` reads the world as is.
IMAGES_FOLDER = "Images"
SCENES_FILE = "scenes.tsv"


def write_dataset(output: Path, *, train_images: int, eval_images: int, seed: int = 0) -> dict[str, int]:
    """Draw the world into ``output`` in the Flickr8K layout.

    Writes ``Images/*.png``, ``Flickr8k.token.txt`` (one composed caption per image),
    ``Flickr_8k.trainImages.txt`` (training pairs only), ``Flickr_8k.devImages.txt``
    (held-out pairs: the trainer's eval MSE is then measured on unseen captions) and
    ``scenes.tsv`` (``image, split, colour, shape, count, emotion, seed``).

    Returns:
        Split -> number of images.
    """
    from PIL import Image

    from s2i.pipeline.prompt import StyleTemplates

    if train_images <= 0 or eval_images <= 0:
        raise ValueError(f"`train_images` and `eval_images` must be positive, got {train_images}, {eval_images}.")
    output = Path(output)
    (output / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    templates = StyleTemplates.load()
    train, held_out = split_scenes()
    tokens, rows, lists = [], [], {"train": [], "dev": []}
    for split, scenes, n, split_seed in (
        ("train", train, train_images, seed),
        ("dev", held_out, eval_images, seed + 1),
    ):
        for image_seed, scene in sample(scenes, n, split_seed):
            name = f"{split}-{len(lists[split]):05d}.png"
            Image.fromarray(render(scene, image_seed)).save(output / IMAGES_FOLDER / name)
            tokens.append(f"{name}#0\t{scene.caption(templates)}")
            rows.append(
                "\t".join(map(str, (name, split, scene.colour, scene.shape, scene.count, scene.emotion, image_seed)))
            )
            lists[split].append(name)
    (output / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    for split, image_names in lists.items():
        (output / f"Flickr_8k.{split}Images.txt").write_text("\n".join(image_names) + "\n", encoding="utf-8")
    header = "image\tsplit\tcolour\tshape\tcount\temotion\tseed"
    (output / SCENES_FILE).write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    LOGGER.info("World: %d training and %d held-out images in %s", len(lists["train"]), len(lists["dev"]), output)
    return {split: len(image_names) for split, image_names in lists.items()}
