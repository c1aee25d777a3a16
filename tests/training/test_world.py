"""The captioned shape world: deterministic drawing, served-composer captions, held-out pairs, the detector."""

import numpy as np
import pytest
from PIL import Image

from s2i.pipeline.prompt import StyleTemplates, compose_prompt
from s2i.training.common import DataIssues
from s2i.training.diffusion_data import read_flickr8k
from s2i.training.world import (
    COLOURS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    PALETTES,
    SHAPES,
    Scene,
    all_scenes,
    is_held_out,
    render,
    sample,
    split_scenes,
    write_dataset,
)
from s2i.training.world_detector import Detection, blob_shape, blobs, detect, faithfulness


def test_render_is_deterministic_when_the_seed_repeats():
    scene = Scene("green", "triangle", 3, "sad")
    first, again, other = render(scene, 11), render(scene, 11), render(scene, 12)
    assert first.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and first.dtype == np.uint8
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_sample_repeats_its_order_when_the_seed_repeats():
    scenes = all_scenes()
    assert list(sample(scenes, 50, 3)) == list(sample(scenes, 50, 3))
    assert list(sample(scenes, 50, 3)) != list(sample(scenes, 50, 4))
    # Every caption comes once before any comes twice.
    assert len({scene for _, scene in sample(scenes, len(scenes), 0)}) == len(scenes)


@pytest.mark.parametrize("seed", [0, 1])
def test_detector_reads_back_every_scene_when_drawn(seed):
    for scene in all_scenes():
        detection = detect(render(scene, seed))
        assert detection == Detection(scene.colour, scene.shape, scene.count, scene.emotion), scene


def test_split_keeps_held_out_pairs_out_of_training_when_split():
    train, held_out = split_scenes()
    assert not set(train) & set(held_out)
    assert len(train) + len(held_out) == len(all_scenes())
    assert {(s.colour, s.shape) for s in held_out} == set(HELD_OUT_PAIRS)
    assert not {(s.colour, s.shape) for s in train} & set(HELD_OUT_PAIRS)
    # Compositional: every colour and every shape of a held-out pair still trains with other partners.
    assert {s.colour for s in train} == set(COLOURS) and {s.shape for s in train} == set(SHAPES)
    assert all(is_held_out(s) for s in held_out)


def test_caption_is_the_served_prompt_when_composed():
    scene = Scene("red", "circle", 2, "happy")
    expected = compose_prompt("two red circles", "happy", StyleTemplates.load()).prompt
    assert scene.text == "two red circles"
    assert scene.caption() == expected
    assert scene.caption().startswith("two red circles, bright sunshine")
    assert Scene("blue", "square", 1, "sad").text == "a blue square"


def test_render_names_the_field_when_a_scene_is_invalid():
    with pytest.raises(ValueError, match="`emotion`"):
        render(Scene("red", "circle", 1, "bored"), 0)
    with pytest.raises(ValueError, match="`count`"):
        render(Scene("red", "circle", 4, "happy"), 0)


def test_write_dataset_is_read_by_the_trainer_when_written(tmp_path):
    counts = write_dataset(tmp_path, train_images=24, eval_images=8, seed=5)
    assert counts == {"train": 24, "dev": 8}
    train = read_flickr8k(tmp_path, "train", issues=DataIssues("error", "train"))
    dev = read_flickr8k(tmp_path, "dev", issues=DataIssues("error", "dev"))
    assert len(train) == 24 and len(dev) == 8
    rows = [line.split("\t") for line in (tmp_path / "scenes.tsv").read_text().splitlines()[1:]]
    by_name = {row[0]: Scene(row[2], row[3], int(row[4]), row[5]) for row in rows}
    for pair in train + dev:
        scene = by_name[pair.image.name]
        assert pair.caption == scene.caption()
        assert is_held_out(scene) == (pair.image.name.startswith("dev-"))
        assert detect(np.asarray(Image.open(pair.image).convert("RGB"))).shape == scene.shape
    again = tmp_path / "again"
    write_dataset(again, train_images=24, eval_images=8, seed=5)
    assert (again / "Flickr8k.token.txt").read_bytes() == (tmp_path / "Flickr8k.token.txt").read_bytes()
    assert (again / "Images" / "train-00003.png").read_bytes() == (tmp_path / "Images" / "train-00003.png").read_bytes()


def test_detect_finds_nothing_when_the_image_has_no_object():
    sky = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), PALETTES["calm"].sky, dtype=np.uint8)
    detection = detect(sky)
    assert (detection.colour, detection.shape, detection.count) == (None, None, 0)


def test_detect_names_the_field_when_the_image_is_not_rgb_uint8():
    with pytest.raises(ValueError, match="`image`"):
        detect(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))


def test_blob_shape_tells_shapes_apart_when_drawn_by_hand():
    square = np.ones((6, 6), dtype=bool)
    triangle = np.array([[abs(c - 4) <= r for c in range(9)] for r in range(5)])
    diamond = np.array([[abs(c - 4) + abs(r - 4) <= 4 for c in range(9)] for r in range(9)])
    found = {name: blobs(mask) for name, mask in (("square", square), ("triangle", triangle), ("diamond", diamond))}
    assert all(len(found[name]) == 1 for name in found)
    assert {name: blob_shape(found[name][0]) for name in found} == {n: n for n in found}
    two = np.zeros((5, 9), dtype=bool)
    two[1:4, 0:3] = two[1:4, 5:8] = True
    assert [len(blob) for blob in blobs(two)] == [9, 9]


def test_faithfulness_gives_known_rates_when_detections_are_known():
    scenes = [Scene("red", "circle", 1, "happy")] * 4
    detections = [
        Detection("red", "circle", 1, "happy"),  # all right
        Detection("red", "square", 2, "happy"),  # colour only
        Detection("blue", "circle", 1, "sad"),  # shape only
        Detection(None, None, 0, "sad"),  # nothing
    ]
    rates = faithfulness(scenes, detections)
    assert rates.as_dict() == {"n": 4, "faithful": 0.25, "colour": 0.5, "shape": 0.5, "count": 0.5, "emotion": 0.5}


def test_faithfulness_names_the_fields_when_lengths_differ():
    with pytest.raises(ValueError, match="`scenes` and `detections`"):
        faithfulness([Scene("red", "circle", 1, "happy")], [])
