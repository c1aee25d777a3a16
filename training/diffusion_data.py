"""Image-caption data for Stable Diffusion fine-tuning in the Flickr8K layout.

Layout (as the Flickr8K release unpacks)::

    flickr8k/
        Flickr8k.token.txt            # "<image>#<n><TAB><caption>", five captions per image
        Flickr_8k.trainImages.txt     # optional split lists, one image name a line
        Flickr_8k.devImages.txt
        Flickr_8k.testImages.txt
        Flicker8k_Dataset/*.jpg       # the release's (misspelt) folder; also Flickr8k_Dataset/, Images/, images/

Every (image, caption) line is one training pair. A split ``X`` uses the images
listed in ``Flickr_8k.XImages.txt``; without split lists, every 20th image (in
name order) is held out for evaluation and the rest trains.

Optional emotion tags: a TSV ``image<TAB>emotion`` (an image may be absent) whose
emotion is written into that image's captions with a template
(``"{caption}, {emotion} mood"`` by default), so the model learns the words the
pipeline's prompt fusion adds.

Images are read with Pillow (any format it opens), converted to RGB, resized so
the shorter side is ``resolution``, cropped square (centre, or random when
``center_crop`` is off), optionally flipped, and scaled to ``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path

import numpy as np

from s2i.training.common import DataError, DataIssues

LOGGER = logging.getLogger(__name__)

TOKEN_FILE = "Flickr8k.token.txt"
IMAGE_FOLDERS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images")
SPLIT_FILE = "Flickr_8k.{split}Images.txt"
# Without split lists, one image in this many (name order) is held out for evaluation.
HOLD_OUT_EVERY = 20
DEFAULT_EMOTION_TEMPLATE = "{caption}, {emotion} mood"


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One training pair: an image file and one of its captions."""

    image: Path
    caption: str

    @property
    def source(self) -> str:
        """The image's file name, for messages."""
        return self.image.name


def find_images_dir(root: Path, images_dir: Path | None = None) -> Path:
    """The folder holding the images: ``images_dir`` if given, else the first of :data:`IMAGE_FOLDERS` present."""
    if images_dir is not None:
        if not Path(images_dir).is_dir():
            raise DataError(f"`images_dir` {images_dir} is not a folder.")
        return Path(images_dir)
    for name in IMAGE_FOLDERS:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    raise DataError(f"No image folder in `{root}`: expected one of {list(IMAGE_FOLDERS)} (or set `images_dir`).")


def read_emotion_tags(path: Path, issues: DataIssues) -> dict[str, str]:
    """``image -> emotion`` from a TSV ``image<TAB>emotion`` (a header row ``image<TAB>emotion`` is allowed)."""
    tags = {}
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or (line_number == 1 and line.lower().split("\t")[:2] == ["image", "emotion"]):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            issues.add(f"{Path(path).name} line {line_number}", "expected `image<TAB>emotion`")
            continue
        tags[parts[0].strip()] = parts[1].strip()
    return tags


def split_images(root: Path, split: str, all_images: list[str]) -> set[str]:
    """Image names of ``split`` (``train``, ``dev``, ``test``): its list file, or the default hold-out."""
    listing = Path(root) / SPLIT_FILE.format(split=split)
    if listing.is_file():
        return {line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()}
    if any((Path(root) / SPLIT_FILE.format(split=s)).is_file() for s in ("train", "dev", "test")):
        raise DataError(f"`{listing}` not found, although other Flickr8K split lists are present.")
    held_out = set(sorted(set(all_images))[::HOLD_OUT_EVERY])
    return held_out if split != "train" else set(all_images) - held_out


def read_flickr8k(
    root: Path,
    split: str,
    *,
    issues: DataIssues,
    images_dir: Path | None = None,
    emotion_tags: dict[str, str] | None = None,
    emotion_template: str = DEFAULT_EMOTION_TEMPLATE,
    report_unattributed: bool = True,
) -> list[CaptionedImage]:
    """The (image, caption) pairs of ``split``; unusable lines and images go to ``issues``.

    Every image of the split is opened once here, so a corrupt file is reported
    (and its captions skipped) before training starts. An empty caption is
    reported with the split of its image; a malformed line (no image to tie it
    to) only when ``report_unattributed`` is set, so reading two splits reports it once.
    """
    root = Path(root)
    token_file = root / TOKEN_FILE
    if not token_file.is_file():
        raise DataError(f"`{token_file}` not found; is `{root}` a Flickr8K folder?")
    folder = find_images_dir(root, images_dir)
    lines = []
    for line_number, line in enumerate(token_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{TOKEN_FILE} line {line_number}"
        key, tab, caption = line.partition("\t")
        name = key.split("#", 1)[0].strip()
        if not tab or not name:
            if report_unattributed:
                issues.add(where, "expected `<image>#<n><TAB><caption>`")
            continue
        lines.append((name, caption.strip(), where))
    wanted = split_images(root, split, [name for name, caption, _ in lines if caption])
    usable: dict[str, bool] = {}
    pairs = []
    for name, caption, where in lines:
        if name not in wanted:
            continue
        if not caption:
            issues.add(f"{name} ({where})", "empty caption")
            continue
        if name not in usable:
            usable[name] = _check_image(folder / name, f"{name} ({where})", issues)
        if not usable[name]:
            continue
        if emotion_tags and name in emotion_tags:
            caption = emotion_template.format(caption=caption, emotion=emotion_tags[name])
        pairs.append(CaptionedImage(folder / name, caption))
    return pairs


def _check_image(path: Path, where: str, issues: DataIssues) -> bool:
    if not path.is_file():
        issues.add(where, f"image not found in {path.parent}")
        return False
    try:
        load_image(path)
    except DataError as e:
        issues.add(where, str(e))
        return False
    return True


def load_image(path: Path):
    """The image at ``path`` as an RGB ``PIL.Image``.

    Raises:
        DataError: Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"unreadable image ({e})") from e


def image_to_array(image, resolution: int, *, center_crop: bool, flip: bool, rng: random.Random) -> np.ndarray:
    """Resize (shorter side = ``resolution``), crop square, maybe flip; CHW float32 in ``[-1, 1]``."""
    from PIL import Image

    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    if center_crop:
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    else:
        left, top = rng.randint(0, image.width - resolution), rng.randint(0, image.height - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class CaptionDataset:
    """A map-style dataset of ``pixel_values`` and CLIP ``input_ids``; images decoded on access.

    Items are looked up by ``(epoch, index)`` (or ``index``, epoch 0): random
    crops, flips and caption dropout (the caption replaced by the empty prompt, so
    the model also learns the unconditional prediction that guidance needs) draw
    from a generator seeded by ``(seed, epoch, index)``, so a resumed run, or one
    with worker processes, sees the same augmentations.
    """

    def __init__(
        self,
        pairs: list[CaptionedImage],
        tokenizer,
        resolution: int,
        *,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        caption_dropout: float = 0.0,
        unconditional_prompt: str = "",
    ) -> None:
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1), got {caption_dropout}.")
        self.pairs = pairs
        self.caption_dropout = caption_dropout
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.input_ids = tokenizer(
            [pair.caption for pair in pairs],
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        ).input_ids
        # What classifier-free guidance's unconditional branch encodes: the empty prompt (Stable
        # Diffusion's training), or the negative prompt a server always sends in its place.
        self.unconditional_ids = tokenizer(
            unconditional_prompt,
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="np",
        ).input_ids[0]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        pair = self.pairs[index]
        try:
            image = load_image(pair.image)
        except DataError as e:
            raise DataError(f"{pair.source}: {e} (it was readable when the data was checked; did it change?)") from e
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        pixels = image_to_array(image, self.resolution, center_crop=self.center_crop, flip=self.random_flip, rng=rng)
        # Drawn after the crop and flip, so runs without dropout see the augmentations they always did.
        dropped = self.caption_dropout and rng.random() < self.caption_dropout
        return {"pixel_values": pixels, "input_ids": self.unconditional_ids if dropped else self.input_ids[index]}


def collate(items: list[dict]) -> dict:
    """Stack :class:`CaptionDataset` items into tensors."""
    import torch

    return {
        "pixel_values": torch.from_numpy(np.stack([item["pixel_values"] for item in items])),
        "input_ids": torch.from_numpy(np.stack([item["input_ids"] for item in items])).long(),
    }


class EpochBatches:
    """Deterministic batches: micro-batch ``m`` is slice ``m % per_epoch`` of epoch ``m // per_epoch``'s permutation.

    Batches never cross epochs (the last partial batch of each is dropped), so a
    resumed run at micro-batch ``m`` continues exactly where it stopped.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if size < batch_size:
            raise DataError(f"The training split has {size} pairs, fewer than `train_batch_size` {batch_size}.")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_epoch = size // batch_size

    def __call__(self, micro_batch: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` keys of micro-batch ``micro_batch``."""
        epoch, slot = divmod(micro_batch, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return [(epoch, int(i)) for i in order[slot * self.batch_size : (slot + 1) * self.batch_size]]

    def sampler(self, start: int, stop: int):
        """A ``batch_sampler`` for ``DataLoader``: micro-batches ``start`` to ``stop - 1``."""
        return _MicroBatches(self, start, stop)


class _MicroBatches:
    def __init__(self, batches: EpochBatches, start: int, stop: int) -> None:
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        return (self.batches(m) for m in range(self.start, self.stop))
