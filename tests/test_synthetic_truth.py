"""synthetic.py's ground truth: every VQA answer and every image and video caption fact follows from
the stored scene, derived here again from the scene alone, and the pixels show the scene."""

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import load_json
from stage0 import synthetic

SIZE_ADJECTIVES = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
RELATIONS = synthetic.RELATIONS


def cell(box: list[int], image_size: int) -> str:
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return (
        f"{'top' if centre_y < image_size / 2 else 'bottom'} "
        f"{('left', 'middle', 'right')[int(3 * centre_x / image_size)]}"
    )


def holds(relation: str, a: dict, b: dict) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return {
        "to the left of": ax1 <= bx0,
        "to the right of": bx1 <= ax0,
        "above": ay1 <= by0,
        "below": by1 <= ay0,
    }[relation]


def the(objects: list[dict], colour: str | None = None, shape: str | None = None) -> dict:
    found = [o for o in objects if colour in (None, o["colour"]) and shape in (None, o["shape"])]
    assert len(found) == 1, f"'the {colour} {shape}' must name exactly one object"
    return found[0]


def singular(word: str) -> str:
    return next(s for s in synthetic.SHAPES if word in (s, synthetic.PLURALS[s]))


def derive_image_answer(question: str, objects: list[dict], image_size: int) -> str:
    if question in ("how many shapes are there?", "how many objects are in the picture?"):
        return str(len(objects))
    if m := re.fullmatch(r"what colou?r is the (\w+)\?", question):
        return the(objects, shape=m[1])["colour"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return the(objects, colour=m[1])["shape"]
    if m := re.fullmatch(r"how many (\w+) (?:shapes|objects) are there\?", question):
        return str(sum(o["colour"] == m[1] for o in objects))
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return str(sum(o["shape"] == singular(m[1]) for o in objects))
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        assert ("an " in question) == (m[1][0] in "aeiou")
        return "yes" if any((o["colour"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    if m := re.fullmatch(r"where is the (\w+) (\w+)\?", question):
        return cell(the(objects, m[1], m[2])["box"], image_size)
    if m := re.fullmatch(
        rf"is the (\w+) (\w+) ({'|'.join(RELATIONS)}) the (\w+) (\w+)\?", question
    ):
        return "yes" if holds(m[3], the(objects, m[1], m[2]), the(objects, m[4], m[5])) else "no"
    if m := re.fullmatch(rf"which shape is ({'|'.join(RELATIONS)}) the (\w+) (\w+)\?", question):
        reference = the(objects, m[2], m[3])
        matching = [o for o in objects if o is not reference and holds(m[1], o, reference)]
        assert len(matching) == 1
        return matching[0]["shape"]
    raise AssertionError(f"unknown question form: {question}")


def derive_video_answer(question: str, video: dict) -> str:
    boxes, colours = video["boxes"], video["colours"]
    moved_x, moved_y = boxes[-1][0] - boxes[0][0], boxes[-1][1] - boxes[0][1]
    direction = (
        ("left" if moved_x < 0 else "right") if moved_x else ("up" if moved_y < 0 else "down")
    )
    assert f" {video['shape']}" in question or question.startswith("what shape")
    if re.fullmatch(r"does the \w+ move\?", question):
        return "yes" if boxes[0] != boxes[-1] else "no"
    if re.fullmatch(r"does the \w+ change color\?", question):
        return "yes" if colours[0] != colours[-1] else "no"
    if re.fullmatch(
        r"which way does the \w+ move\?|in which direction is the \w+ \w+ moving\?", question
    ):
        return direction
    if question in ("what shape is moving?", "what shape changes color?"):
        return video["shape"]
    if re.fullmatch(r"what color is the \w+( at the start)?\?", question):
        return colours[0]
    if re.fullmatch(r"what color does the \w+ turn\?|what color is the \w+ at the end\?", question):
        return colours[-1]
    raise AssertionError(f"unknown question form: {question}")


@pytest.mark.parametrize("prefix", ["", "video_"])
def test_every_vqa_answer_follows_from_the_scene(world, prefix):
    kinds = set()
    for split in synthetic.SPLITS:
        scenes = {
            s["image_id"]: s for s in load_json(world / f"{prefix}scenes_{split}.json")["scenes"]
        }
        questions = load_json(world / f"{prefix}questions_{split}.json")["questions"]
        annotations = {
            a["question_id"]: a
            for a in load_json(world / f"{prefix}annotations_{split}.json")["annotations"]
        }
        assert len(questions) == len(annotations) == len(scenes) * (3 if prefix else 5)
        for question in questions:
            scene, annotation = scenes[question["image_id"]], annotations[question["question_id"]]
            kinds.add(annotation["question_type"])
            truth = (
                derive_video_answer(question["question"], scene)
                if prefix
                else derive_image_answer(question["question"], scene["objects"], 64)
            )
            assert annotation["multiple_choice_answer"] == truth, question
            assert annotation["answer_type"] == (
                "yes/no" if truth in ("yes", "no") else "number" if truth.isdigit() else "other"
            )
            assert (
                question["question"]
                .replace("colour", "color")
                .startswith(annotation["question_type"])
            )
            answers = [a["answer"] for a in annotation["answers"]]
            assert len(answers) == 10 and [a["answer_id"] for a in annotation["answers"]] == list(
                range(1, 11)
            )
            assert (
                Counter(answers).most_common(1)[0] == (truth, answers.count(truth))
                and answers.count(truth) >= 6
            )
            vocabulary = {
                "yes",
                "no",
                *synthetic.COLOURS,
                *synthetic.SHAPES,
                *synthetic.POSITIONS,
                *synthetic.DIRECTIONS,
                *"01234",
            }
            assert all(
                a in synthetic.surface_variants(truth) or a in vocabulary for a in answers
            ), answers
    assert kinds == (
        {
            "does the",
            "which way does the",
            "in which direction is",
            "what color is the",
            "what shape is",
            "what shape",
            "what color does the",
        }
        if prefix
        else {
            "what color is the",
            "what shape is the",
            "how many",
            "is there a",
            "where is the",
            "is the",
            "which shape is",
        }
    )


def phrase_pattern(name: str) -> str:
    return (
        rf"(?P<{name}_count>a single|an|a|two|three) "
        rf"(?:(?P<{name}_size>{'|'.join(SIZE_ADJECTIVES)}) )?"
        rf"(?P<{name}_colour>{'|'.join(synthetic.COLOURS)}) "
        rf"(?P<{name}_shape>{'|'.join(synthetic.SHAPES)})(?P<{name}_plural>e?s)?\b"
    )


def matching_objects(match: re.Match, name: str, objects: list[dict]) -> list[dict]:
    """The scene objects a matched noun phrase can denote; checks its count, size and article."""
    count, size = match[f"{name}_count"], SIZE_ADJECTIVES.get(match[f"{name}_size"] or "")
    group = [
        o
        for o in objects
        if (o["colour"], o["shape"]) == (match[f"{name}_colour"], match[f"{name}_shape"])
    ]
    assert group, f"{match[0]!r} is not in the scene"
    if count in ("two", "three"):
        assert match[f"{name}_plural"] and len(group) == ("two", "three").index(count) + 2, match[0]
        assert size is None or all(o["size"] == size for o in group), match[0]
        return group
    assert not match[f"{name}_plural"]
    if count == "a single":
        assert len(objects) == 1
    else:
        assert count == (
            "an" if (match[f"{name}_size"] or match[f"{name}_colour"])[0] in "aeiou" else "a"
        ), match[0]
    return [o for o in group if size in (None, o["size"])]


def test_every_image_caption_fact_follows_from_the_scene(world):
    phrase = re.compile(phrase_pattern("p"))
    related = re.compile(
        phrase_pattern("a")
        + rf" (?:is )?(?P<relation>{'|'.join(RELATIONS)}) "
        + phrase_pattern("b")
    )
    placed = re.compile(
        phrase_pattern("p") + r" (?:at|in) the (?P<cell>(?:top|bottom) (?:left|middle|right))"
    )
    checked = Counter()
    for split in synthetic.SPLITS:
        scenes = {
            s["image_id"]: s["objects"] for s in load_json(world / f"scenes_{split}.json")["scenes"]
        }
        captions = load_json(world / f"captions_{split}.json")["annotations"]
        by_image = {
            image_id: [c["caption"] for c in captions if c["image_id"] == image_id]
            for image_id in scenes
        }
        for image_id, texts in by_image.items():
            objects = scenes[image_id]
            assert len(texts) == 5 == len(set(texts)) and all(t == t.lower() for t in texts)
            mentioned = set()
            for text in texts:
                groups = {
                    (m["p_colour"], m["p_shape"])
                    for m in phrase.finditer(text)
                    if matching_objects(m, "p", objects)
                }
                mentioned |= groups
                checked.update(m["p_count"] for m in phrase.finditer(text))
                if m := related.search(text):
                    checked["relation"] += 1
                    assert any(
                        holds(m["relation"], a, b)
                        for a in matching_objects(m, "a", objects)
                        for b in matching_objects(m, "b", objects)
                        if a is not b
                    ), text
                else:  # any caption without a relation lists every kind of object
                    assert groups == {(o["colour"], o["shape"]) for o in objects}, text
                for m in placed.finditer(text):
                    assert any(
                        cell(o["box"], 64) == m["cell"] for o in matching_objects(m, "p", objects)
                    ), text
                    checked["position"] += 1
                if m := re.match(r"(two|three) (?:shapes|objects):", text):
                    assert len(objects) == ("two", "three").index(m[1]) + 2
                    checked["total"] += 1
            assert mentioned == {(o["colour"], o["shape"]) for o in objects}
    assert set(checked) == {
        "a",
        "an",
        "a single",
        "two",
        "three",
        "relation",
        "position",
        "total",
    }, checked


def test_every_video_caption_fact_follows_from_the_scene(world):
    words = {
        "left": {"left", "leftwards"},
        "right": {"right", "rightwards"},
        "up": {"up", "upwards", "top"},
        "down": {"down", "downwards", "bottom"},
    }
    ends = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
    for split in synthetic.SPLITS:
        scenes = {
            s["image_id"]: s for s in load_json(world / f"video_scenes_{split}.json")["scenes"]
        }
        for caption in load_json(world / f"video_captions_{split}.json")["annotations"]:
            video, text = scenes[caption["image_id"]], caption["caption"]
            tokens = text.split()
            assert video["shape"] in tokens and {
                SIZE_ADJECTIVES[t] for t in tokens if t in SIZE_ADJECTIVES
            } <= {video["size"]}
            start, end = video["colours"][0], video["colours"][-1]
            if start != end:
                assert tokens.index(start) < len(tokens) - 1 - tokens[::-1].index(end), text
                assert not set(tokens) & (set(synthetic.DIRECTIONS) - {"left", "right"}), text
                continue
            assert start in tokens and not set(tokens) & (set(synthetic.COLOURS) - {start})
            (x0, y0, *_), (x1, y1, *_) = video["boxes"][0], video["boxes"][-1]
            direction = (
                ("left" if x1 < x0 else "right") if x1 != x0 else ("up" if y1 < y0 else "down")
            )
            if m := re.search(r"from (?:the )?(\w+) to (?:the )?(\w+)", text):
                assert m[2] == ends[direction] and m[1] != m[2], text
            else:
                assert set(tokens) & words[direction] and not set(tokens) & set().union(
                    *(w for d, w in words.items() if d != direction)
                ), text


def test_pixels_show_the_scene(world):
    for split in synthetic.SPLITS:
        for scene in load_json(world / f"scenes_{split}.json")["scenes"]:
            pixels = np.asarray(Image.open(world / scene["file_name"]))  # (H, W, 3)
            assert pixels.shape == (64, 64, 3)
            outside = np.ones((64, 64), dtype=bool)
            for obj in scene["objects"]:
                x0, y0, x1, y1 = obj["box"]
                colour = synthetic.COLOURS[obj["colour"]]
                assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == colour
                assert (pixels[y0:y1, x0:x1] == colour).all(-1).mean() > 0.25
                outside[y0:y1, x0:x1] = False
            assert pixels[outside].min() >= 150, "the background stays light, so shapes stand out"
        for video in load_json(world / f"video_scenes_{split}.json")["scenes"]:
            frames = sorted((world / video["file_name"]).iterdir())
            assert [f.name for f in frames] == [f"frame_{t:03d}.png" for t in range(4)]
            for frame, (x0, y0, x1, y1), colour in zip(frames, video["boxes"], video["colours"]):
                assert (
                    tuple(np.asarray(Image.open(frame))[(y0 + y1) // 2, (x0 + x1) // 2])
                    == synthetic.COLOURS[colour]
                )
