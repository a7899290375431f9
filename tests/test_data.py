"""data.py: the synthetic world is deterministic and true to its scenes; readers, tokenizer,
dataset, collate and feature cache behave as the training and evaluation scripts expect."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(train_images=40, val_images=8, test_images=8, train_videos=12, val_videos=3, test_videos=3, num_frames=4)
SIZE_ADJECTIVES = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
RELATIONS = data.RELATIONS


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    data.generate(out, data.WorldConfig(seed=1, **SMALL))
    return out


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory) -> data.Tokenizer:
    return data.Tokenizer.train(training_texts(world), tmp_path_factory.mktemp("tok") / "shapes.model", vocab_size=400)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def training_texts(world: Path) -> list[str]:
    captions = data.read_captions(world / "captions_train.json").examples
    vqa = data.read_vqa(world / "questions_train.json", world / "annotations_train.json", world / "captions_train.json").examples
    return [e.target for e in captions] + [f"{e.prompt} {e.target}" for e in vqa]


# --- the generator ----------------------------------------------------------------------------

def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    tiny = dict(train_images=6, val_images=2, test_images=2, train_videos=2, val_videos=1, test_videos=1, num_frames=3)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        data.generate(tmp_path / name, data.WorldConfig(seed=seed, **tiny))
    first, second, other = (file_hashes(tmp_path / name) for name in "abc")
    assert len(first) == 10 + 4 * 3 + 25 and first == second  # images, frames, JSON
    assert other.keys() == first.keys()
    changed = [name for name in first if first[name] != other[name]]
    assert "captions_train.json" in changed and "images/train/000000000001.png" in changed


def test_regenerating_into_the_same_folder_replaces_the_old_world(tmp_path):
    data.generate(tmp_path, data.WorldConfig(**{**SMALL, "train_images": 10}))
    data.generate(tmp_path, data.WorldConfig(**{**SMALL, "train_images": 3}))
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3


def test_splits_are_disjoint_and_dataset_json_counts_them(world):
    summary = load(world / "dataset.json")
    assert summary["generator_version"] == data.GENERATOR_VERSION and summary["seed"] == 1
    assert summary["options"]["num_frames"] == 4
    ids, hashes = [], []
    for prefix, kind in (("", "images"), ("video_", "videos")):
        for split in data.SPLITS:
            captions = load(world / f"{prefix}captions_{split}.json")
            count = SMALL[f"{split}_{kind}"]
            assert len(captions["images"]) == count == summary["counts"][prefix + split]["items"]
            assert len(captions["annotations"]) == 5 * count == summary["counts"][prefix + split]["captions"]
            ids += [image["id"] for image in captions["images"]]
            for image in captions["images"]:  # a video's frames may repeat inside it, not across videos
                files = sorted((world / image["file_name"]).glob("*.png")) or [world / image["file_name"]]
                hashes.append(hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest())
    assert len(ids) == len(set(ids)), "image ids must be unique across splits (the feature cache keys on them)"
    assert len(hashes) == len(set(hashes)) == len(ids), "no image or video may appear twice"


def test_command_line(tmp_path):
    shown = subprocess.run([sys.executable, "data.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0 and "--train-images" in shown.stdout and "--num-frames" in shown.stdout
    flags = "--train-images 3 --val-images 1 --test-images 1 --train-videos 1 --val-videos 1 --test-videos 1 --num-frames 2 --image-size 32 --seed 9"
    run = subprocess.run([sys.executable, "data.py", "--out", str(tmp_path), *flags.split()], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    options = load(tmp_path / "dataset.json")["options"]
    assert options["image_size"] == 32 and options["seed"] == 9
    assert Image.open(tmp_path / "images" / "train" / "000000000001.png").size == (32, 32)
    assert len(list((tmp_path / "videos" / "train" / "000003000001").iterdir())) == 2


# --- ground truth: every answer and caption fact follows from the stored scene -------------------

def cell(box: list[int], image_size: int) -> str:
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return f"{'top' if centre_y < image_size / 2 else 'bottom'} {('left', 'middle', 'right')[int(3 * centre_x / image_size)]}"


def holds(relation: str, a: dict, b: dict) -> bool:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
    return {"to the left of": ax1 <= bx0, "to the right of": bx1 <= ax0, "above": ay1 <= by0, "below": by1 <= ay0}[relation]


def the(objects: list[dict], colour: str | None = None, shape: str | None = None) -> dict:
    found = [o for o in objects if colour in (None, o["colour"]) and shape in (None, o["shape"])]
    assert len(found) == 1, f"'the {colour} {shape}' must name exactly one object"
    return found[0]


def singular(word: str) -> str:
    return next(s for s in data.SHAPES if word in (s, data.PLURALS[s]))


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
    if m := re.fullmatch(rf"is the (\w+) (\w+) ({'|'.join(RELATIONS)}) the (\w+) (\w+)\?", question):
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
    direction = ("left" if moved_x < 0 else "right") if moved_x else ("up" if moved_y < 0 else "down")
    assert f" {video['shape']}" in question or question.startswith("what shape")
    if re.fullmatch(r"does the \w+ move\?", question):
        return "yes" if boxes[0] != boxes[-1] else "no"
    if re.fullmatch(r"does the \w+ change color\?", question):
        return "yes" if colours[0] != colours[-1] else "no"
    if re.fullmatch(r"which way does the \w+ move\?|in which direction is the \w+ \w+ moving\?", question):
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
    for split in data.SPLITS:
        scenes = {s["image_id"]: s for s in load(world / f"{prefix}scenes_{split}.json")["scenes"]}
        questions = load(world / f"{prefix}questions_{split}.json")["questions"]
        annotations = {a["question_id"]: a for a in load(world / f"{prefix}annotations_{split}.json")["annotations"]}
        assert len(questions) == len(annotations) == len(scenes) * (3 if prefix else 5)
        for question in questions:
            scene, annotation = scenes[question["image_id"]], annotations[question["question_id"]]
            kinds.add(annotation["question_type"])
            truth = (derive_video_answer(question["question"], scene) if prefix
                     else derive_image_answer(question["question"], scene["objects"], 64))
            assert annotation["multiple_choice_answer"] == truth, question
            assert annotation["answer_type"] == ("yes/no" if truth in ("yes", "no") else "number" if truth.isdigit() else "other")
            assert question["question"].replace("colour", "color").startswith(annotation["question_type"])
            answers = [a["answer"] for a in annotation["answers"]]
            assert len(answers) == 10 and [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
            assert Counter(answers).most_common(1)[0] == (truth, answers.count(truth)) and answers.count(truth) >= 6
            vocabulary = {"yes", "no", *data.COLOURS, *data.SHAPES, *data.POSITIONS, *data.DIRECTIONS, *"01234"}
            assert all(a in data.surface_variants(truth) or a in vocabulary for a in answers), answers
    assert kinds == ({"does the", "which way does the", "in which direction is", "what color is the", "what shape is",
                      "what shape", "what color does the"} if prefix else
                     {"what color is the", "what shape is the", "how many", "is there a", "where is the", "is the", "which shape is"})


def phrase_pattern(name: str) -> str:
    return (rf"(?P<{name}_count>a single|an|a|two|three) (?:(?P<{name}_size>{'|'.join(SIZE_ADJECTIVES)}) )?"
            rf"(?P<{name}_colour>{'|'.join(data.COLOURS)}) (?P<{name}_shape>{'|'.join(data.SHAPES)})(?P<{name}_plural>e?s)?\b")


def matching_objects(match: re.Match, name: str, objects: list[dict]) -> list[dict]:
    """The scene objects a matched noun phrase can denote; checks its count, size and article."""
    count, size = match[f"{name}_count"], SIZE_ADJECTIVES.get(match[f"{name}_size"] or "")
    group = [o for o in objects if (o["colour"], o["shape"]) == (match[f"{name}_colour"], match[f"{name}_shape"])]
    assert group, f"{match[0]!r} is not in the scene"
    if count in ("two", "three"):
        assert match[f"{name}_plural"] and len(group) == ("two", "three").index(count) + 2, match[0]
        assert size is None or all(o["size"] == size for o in group), match[0]
        return group
    assert not match[f"{name}_plural"]
    if count == "a single":
        assert len(objects) == 1
    else:
        assert count == ("an" if (match[f"{name}_size"] or match[f"{name}_colour"])[0] in "aeiou" else "a"), match[0]
    return [o for o in group if size in (None, o["size"])]


def test_every_image_caption_fact_follows_from_the_scene(world):
    phrase = re.compile(phrase_pattern("p"))
    related = re.compile(phrase_pattern("a") + rf" (?:is )?(?P<relation>{'|'.join(RELATIONS)}) " + phrase_pattern("b"))
    placed = re.compile(phrase_pattern("p") + r" (?:at|in) the (?P<cell>(?:top|bottom) (?:left|middle|right))")
    checked = Counter()
    for split in data.SPLITS:
        scenes = {s["image_id"]: s["objects"] for s in load(world / f"scenes_{split}.json")["scenes"]}
        captions = load(world / f"captions_{split}.json")["annotations"]
        by_image = {image_id: [c["caption"] for c in captions if c["image_id"] == image_id] for image_id in scenes}
        for image_id, texts in by_image.items():
            objects = scenes[image_id]
            assert len(texts) == 5 == len(set(texts)) and all(t == t.lower() for t in texts)
            mentioned = set()
            for text in texts:
                groups = {(m["p_colour"], m["p_shape"]) for m in phrase.finditer(text) if matching_objects(m, "p", objects)}
                mentioned |= groups
                checked.update(m["p_count"] for m in phrase.finditer(text))
                if m := related.search(text):
                    checked["relation"] += 1
                    assert any(holds(m["relation"], a, b) for a in matching_objects(m, "a", objects)
                               for b in matching_objects(m, "b", objects) if a is not b), text
                else:  # any caption without a relation lists every kind of object
                    assert groups == {(o["colour"], o["shape"]) for o in objects}, text
                for m in placed.finditer(text):
                    assert any(cell(o["box"], 64) == m["cell"] for o in matching_objects(m, "p", objects)), text
                    checked["position"] += 1
                if m := re.match(r"(two|three) (?:shapes|objects):", text):
                    assert len(objects) == ("two", "three").index(m[1]) + 2
                    checked["total"] += 1
            assert mentioned == {(o["colour"], o["shape"]) for o in objects}
    assert set(checked) == {"a", "an", "a single", "two", "three", "relation", "position", "total"}, checked


def test_every_video_caption_fact_follows_from_the_scene(world):
    words = {"left": {"left", "leftwards"}, "right": {"right", "rightwards"}, "up": {"up", "upwards", "top"},
             "down": {"down", "downwards", "bottom"}}
    ends = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
    for split in data.SPLITS:
        scenes = {s["image_id"]: s for s in load(world / f"video_scenes_{split}.json")["scenes"]}
        for caption in load(world / f"video_captions_{split}.json")["annotations"]:
            video, text = scenes[caption["image_id"]], caption["caption"]
            tokens = text.split()
            assert video["shape"] in tokens and {SIZE_ADJECTIVES[t] for t in tokens if t in SIZE_ADJECTIVES} <= {video["size"]}
            start, end = video["colours"][0], video["colours"][-1]
            if start != end:
                assert tokens.index(start) < len(tokens) - 1 - tokens[::-1].index(end), text
                assert not set(tokens) & (set(data.DIRECTIONS) - {"left", "right"}), text
                continue
            assert start in tokens and not set(tokens) & (set(data.COLOURS) - {start})
            (x0, y0, *_), (x1, y1, *_) = video["boxes"][0], video["boxes"][-1]
            direction = ("left" if x1 < x0 else "right") if x1 != x0 else ("up" if y1 < y0 else "down")
            if m := re.search(r"from (?:the )?(\w+) to (?:the )?(\w+)", text):
                assert m[2] == ends[direction] and m[1] != m[2], text
            else:
                assert set(tokens) & words[direction] and not set(tokens) & set().union(
                    *(w for d, w in words.items() if d != direction)), text


def test_pixels_show_the_scene(world):
    for split in data.SPLITS:
        for scene in load(world / f"scenes_{split}.json")["scenes"]:
            pixels = np.asarray(Image.open(world / scene["file_name"]))  # (H, W, 3)
            assert pixels.shape == (64, 64, 3)
            outside = np.ones((64, 64), dtype=bool)
            for obj in scene["objects"]:
                x0, y0, x1, y1 = obj["box"]
                colour = data.COLOURS[obj["colour"]]
                assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == colour
                assert (pixels[y0:y1, x0:x1] == colour).all(-1).mean() > 0.25
                outside[y0:y1, x0:x1] = False
            assert pixels[outside].min() >= 150, "the background stays light, so shapes stand out"
        for video in load(world / f"video_scenes_{split}.json")["scenes"]:
            frames = sorted((world / video["file_name"]).iterdir())
            assert [f.name for f in frames] == [f"frame_{t:03d}.png" for t in range(4)]
            for frame, (x0, y0, x1, y1), colour in zip(frames, video["boxes"], video["colours"]):
                assert tuple(np.asarray(Image.open(frame))[(y0 + y1) // 2, (x0 + x1) // 2]) == data.COLOURS[colour]


# --- readers ---------------------------------------------------------------------------------

def write_image(path: Path, size=(40, 30), colour=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def official_coco(root: Path) -> Path:
    """A tiny captions_train2014.json with images in train2014/, as COCO ships them."""
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": 40, "height": 30, "license": 1} for i in (9, 25, 30)]
    for image in images:
        write_image(root / "train2014" / image["file_name"])
    annotations = [{"id": 100 + k, "image_id": image["id"], "caption": f"A red photo number {k}."}
                   for k, image in enumerate(images + images)]
    path = root / "annotations" / "captions_train2014.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def test_reads_official_coco_captions(tmp_path):
    path = official_coco(tmp_path)
    read = data.read_captions(path, image_root=tmp_path / "train2014")
    assert len(read.examples) == 6 and set(read.images) == {9, 25, 30}
    assert read.references[25] == ["A red photo number 1.", "A red photo number 4."]
    assert all(e.prompt == "" and e.question_id is None for e in read.examples)
    pixels = data.load_pixels(read.images[9], 32)
    assert pixels.shape == (3, 32, 32) and torch.allclose(pixels[:, 16, 16], (torch.tensor([200, 30, 30]) / 255 - 0.5) / 0.5, atol=0.02)


def test_reads_karpathy_split_with_restval_as_train(tmp_path):
    entries = []
    for cocoid, (split, folder) in enumerate([("train", "train2014"), ("restval", "val2014"), ("val", "val2014"), ("test", "val2014")]):
        file_name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_image(tmp_path / folder / file_name)
        entries.append({"filepath": folder, "filename": file_name, "imgid": cocoid + 50, "split": split, "cocoid": cocoid,
                        "sentenceids": [0, 1], "sentences": [{"tokens": ["a", "cat"], "raw": f"A cat {cocoid}.", "imgid": cocoid,
                                                              "sentid": 0}, {"tokens": ["cat"], "raw": "Cat", "sentid": 1}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    train = data.read_captions(path, image_root=tmp_path, split="train")
    assert set(train.images) == {0, 1} and len(train.examples) == 4
    assert train.references[1] == ["A cat 1.", "Cat"] and train.images[1] == tmp_path / "val2014" / "COCO_val2014_000000000001.jpg"
    assert set(data.read_captions(path, tmp_path, split="val").images) == {2}
    assert set(data.read_captions(path, tmp_path, split="test").images) == {3}
    assert len(data.read_captions(path, tmp_path).examples) == 8


def official_vqa(root: Path) -> tuple[Path, Path]:
    for image_id in (42, 73):
        write_image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = [{"image_id": 42, "question": "What color is the photo?", "question_id": 42000},
                 {"image_id": 73, "question": "How many cats?", "question_id": 73001}]
    human = lambda *texts: [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]
    annotations = [{"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
                    "multiple_choice_answer": "red", "answers": human(*["red"] * 8, "Red", "pink")},
                   {"question_id": 73001, "image_id": 73, "question_type": "how many", "answer_type": "number",
                    "multiple_choice_answer": "2", "answers": human(*["2"] * 7, "two", "3", "2")}]
    questions_path, annotations_path = root / "v2_OpenEnded_mscoco_val2014_questions.json", root / "v2_mscoco_val2014_annotations.json"
    questions_path.write_text(json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                                          "data_subtype": "val2014", "license": {}, "questions": questions}))
    annotations_path.write_text(json.dumps({"info": {}, "data_type": "mscoco", "data_subtype": "val2014", "annotations": annotations}))
    return questions_path, annotations_path


def test_reads_vqav2_with_coco_file_names(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    read = data.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert [(e.question_id, e.prompt, e.target) for e in read.examples] == [
        (42000, "question: What color is the photo? answer:", "red"), (73001, "question: How many cats? answer:", "2")]
    assert read.references[42000] == ["red"] * 8 + ["Red", "pink"] and len(read.references[73001]) == 10
    assert read.images[73] == tmp_path / "val2014" / "COCO_val2014_000000000073.jpg"
    questions_only = data.read_vqa(questions, image_root=tmp_path / "val2014")  # test-dev style
    assert [e.target for e in questions_only.examples] == ["", ""]


def test_reads_the_synthetic_world_with_the_same_readers(world):
    captions = data.read_captions(world / "captions_val.json")
    assert len(captions.examples) == 5 * 8 and all(len(r) == 5 for r in captions.references.values())
    vqa = data.read_vqa(world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json")
    truth = {a["question_id"]: a["multiple_choice_answer"] for a in load(world / "annotations_val.json")["annotations"]}
    assert {e.question_id: e.target for e in vqa.examples} == truth
    assert all(e.prompt.startswith("question: ") and e.prompt.endswith("? answer:") for e in vqa.examples)
    videos = data.read_vqa(world / "video_questions_val.json", world / "video_annotations_val.json",
                           world / "video_captions_val.json", num_frames=4)
    assert len(videos.examples) == 9 and all(p.is_dir() for p in videos.images.values())
    assert data.load_pixels(videos.examples[0].path, 64).shape == (4, 3, 64, 64)


# --- bad input -------------------------------------------------------------------------------

def break_coco(root: Path, case: str) -> tuple[Path, dict, str, str]:
    """Breaks one thing in a small COCO layout; returns (json, reader kwargs, text the error names, reason)."""
    path = official_coco(root)
    content = load(path)
    image = root / "train2014" / content["images"][1]["file_name"]
    kwargs = {"image_root": root / "train2014"}
    if case == "missing image file":
        image.unlink()
        named = (str(image), "'file_name'")
    elif case == "missing field":
        del content["annotations"][2]["caption"]
        named = (str(path), "annotations[2]", "'caption'")
    elif case == "missing file_name":
        del content["images"][1]["file_name"]
        named, case = (str(path), "images[1]", "'file_name'"), "missing field"
    elif case == "unknown image_id":
        content["annotations"][0]["image_id"] = 777
        named = (str(path), "'image_id'", "777")
    elif case == "empty caption":
        content["annotations"][4]["caption"] = "  "
        named = (str(path), "annotations[4]", "'caption'", "empty")
    elif case == "wrong frame count":
        for k, entry in enumerate(content["images"]):
            folder = root / "frames" / str(entry["id"])
            for t in range(3 if k == 1 else 4):
                write_image(folder / f"frame_{t:03d}.png")
            entry["file_name"] = f"frames/{entry['id']}"
        kwargs = {"image_root": root, "num_frames": 4}
        named = (str(root / "frames" / "25"), "'file_name'", "expected 4 frames")
    path.write_text(json.dumps(content))
    return path, kwargs, named, case


@pytest.mark.parametrize("case", ["missing image file", "missing field", "missing file_name", "unknown image_id",
                                  "empty caption", "wrong frame count"])
def test_bad_caption_data_raises_or_is_skipped_and_counted(tmp_path, case):
    path, kwargs, named, reason = break_coco(tmp_path, case)
    with pytest.raises(data.DataError) as error:
        data.read_captions(path, **kwargs)
    assert all(text in str(error.value) for text in named), str(error.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read = data.read_captions(path, **kwargs, on_bad_sample="skip")
    assert read.skipped == Counter({reason: 1})
    assert len(caught) == 1 and f"1 x {reason}" in str(caught[0].message)
    lost = 2 if case in ("missing image file", "missing file_name", "wrong frame count") else 1
    assert len(read.examples) == 6 - lost


def test_bad_vqa_annotation_raises_or_is_skipped(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    content = load(annotations)
    del content["annotations"][1]["multiple_choice_answer"]
    annotations.write_text(json.dumps(content))
    with pytest.raises(data.DataError, match=r"annotations\[1\] field 'multiple_choice_answer'") as error:
        data.read_vqa(questions, annotations, image_root=tmp_path / "val2014")
    assert str(annotations) in str(error.value)
    with pytest.warns(UserWarning, match="1 x missing annotation, 1 x missing field"):
        read = data.read_vqa(questions, annotations, image_root=tmp_path / "val2014", on_bad_sample="skip")
    assert [e.question_id for e in read.examples] == [42000]


def test_vqa_questions_on_a_skipped_image_are_left_out_and_counted_once(tmp_path):
    questions, annotations = official_vqa(tmp_path)
    images = tmp_path / "image_info.json"
    images.write_text(json.dumps({"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (42, 73)]}))
    (tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(data.DataError, match=r"images\[0\] field 'file_name'"):
        data.read_vqa(questions, annotations, images, image_root=tmp_path / "val2014")
    with pytest.warns(UserWarning):
        read = data.read_vqa(questions, annotations, images, image_root=tmp_path / "val2014", on_bad_sample="skip")
    assert [e.question_id for e in read.examples] == [73001] and read.skipped == Counter({"missing image file": 1})


def test_missing_top_level_list_or_json_file_always_raises(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "info": {}}))
    with pytest.raises(data.DataError, match="top-level field 'annotations' is missing"):
        data.read_captions(path, on_bad_sample="skip")
    with pytest.raises(data.DataError, match="not found"):
        data.read_captions(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="on_bad_sample"):
        data.read_captions(official_coco(tmp_path), on_bad_sample="ignore")


def test_truncated_image_raises_in_dataset_or_is_replaced_by_the_next_sample(tmp_path, tokenizer):
    path = official_coco(tmp_path)
    read = data.read_captions(path, image_root=tmp_path / "train2014")
    broken = read.images[25]
    broken.write_bytes(broken.read_bytes()[:200])
    strict = data.VisionTextDataset(read.examples, tokenizer, 32)
    with pytest.raises(data.DataError) as error:
        strict[1]
    assert str(broken) in str(error.value) and "'file_name'" in str(error.value) and "25" in str(error.value)
    lenient = data.VisionTextDataset(read.examples, tokenizer, 32, on_bad_sample="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [lenient[i]["image_id"] for i in range(len(lenient))]
    assert ids == [9, 30, 30, 9, 30, 30] and len(caught) == 1 and lenient.unreadable == {broken}


# --- pixels ----------------------------------------------------------------------------------

def test_any_pil_mode_loads_as_rgb(tmp_path):
    def loaded(image: Image.Image, name: str, **kwargs) -> torch.Tensor:
        image.save(tmp_path / name)
        pixels = data.load_image(tmp_path / name, 16, **kwargs)
        assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.float32
        return pixels * 0.5 + 0.5  # back to [0, 1]

    assert torch.allclose(loaded(Image.new("L", (16, 16), 51), "grey.png"), torch.full((3, 16, 16), 0.2), atol=1e-6)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert torch.allclose(loaded(palette, "palette.png")[:, 0, 0], torch.tensor([10, 200, 30]) / 255)
    palette.info["transparency"] = 1
    assert torch.allclose(loaded(palette, "palette_transparent.png"), torch.ones(3, 16, 16))
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.putpixel((8, 8), (255, 0, 0, 255))
    rgba_pixels = loaded(rgba, "rgba.png")
    assert torch.allclose(rgba_pixels[:, 0, 0], torch.ones(3)) and torch.allclose(rgba_pixels[:, 8, 8], torch.tensor([1.0, 0, 0]))
    cmyk = loaded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "cmyk.jpg")
    assert cmyk[0].mean() > 0.9 and cmyk[1:].mean() < 0.1  # no cyan, full magenta+yellow: red
    deep = Image.new("I;16", (16, 16), 32896)
    assert torch.allclose(loaded(deep, "deep.png"), torch.full((3, 16, 16), 128 / 255), atol=1 / 255)
    normalized = data.load_image(tmp_path / "grey.png", 16, mean=(0.2, 0.2, 0.2), std=(0.1, 0.1, 0.1))
    assert torch.allclose(normalized, torch.zeros(3, 16, 16), atol=1e-5)


def test_short_side_is_resized_and_centre_cropped(tmp_path):
    array = np.zeros((40, 80, 3), dtype=np.uint8)  # (H, W, 3): left half black, right half white
    array[:, 40:] = 255
    array[:, :20] = (255, 0, 0)  # left quarter red: cropped away
    Image.fromarray(array).save(tmp_path / "wide.png")
    pixels = data.load_image(tmp_path / "wide.png", 20) * 0.5 + 0.5  # (3, 20, 20) from the centre 40x40
    assert pixels.shape == (3, 20, 20)
    assert pixels[:, :, 1:8].max() < 0.05 and pixels[:, :, 12:].min() > 0.95  # bicubic may bleed at the edge


# --- tokenizer, dataset, collate, cache -------------------------------------------------------

def test_tokenizer_round_trip_special_ids_and_determinism(world, tokenizer, tmp_path):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert 20 < tokenizer.vocab_size <= 400
    texts = training_texts(world) + [c["caption"] for c in load(world / "video_captions_train.json")["annotations"]]
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.unk_id not in ids and min(ids) > 3 and tokenizer.decode(ids) == text
    ids = tokenizer.encode("a red circle")
    assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]) == "a red circle"
    again = data.Tokenizer.train(training_texts(world), tmp_path / "again.model", vocab_size=400)
    assert (tmp_path / "again.model").read_bytes() == tokenizer.model.serialized_model_proto()
    assert data.Tokenizer(tmp_path / "again.model").encode(texts[0]) == again.encode(texts[0]) == tokenizer.encode(texts[0])


def test_tokenizer_needs_pad_bos_and_eos(tmp_path):
    model = tmp_path / "no_pad.model"
    with open(model, "wb") as out:
        data.sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["a red circle"] * 20), model_writer=out,
                                                      vocab_size=12, hard_vocab_limit=False, pad_id=-1, minloglevel=2)
    with pytest.raises(data.DataError, match="pad_id"):
        data.Tokenizer(model)


def test_vqa_batches_put_the_loss_on_answer_and_eos_only(world, tokenizer):
    read = data.read_vqa(world / "questions_train.json", world / "annotations_train.json", world / "captions_train.json")
    dataset = data.VisionTextDataset(read.examples, tokenizer, 64)
    samples = [dataset[i] for i in range(6)]
    batch = data.collate(samples, tokenizer.pad_id)
    lengths = batch["lengths"].tolist()
    assert batch["pixels"].shape == (6, 3, 64, 64) and batch["input_ids"].shape == batch["loss_mask"].shape == (6, max(lengths))
    assert batch["input_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.bool
    assert batch["question_ids"] == [e.question_id for e in read.examples[:6]] and batch["image_ids"] == [e.image_id for e in read.examples[:6]]
    for row, example in enumerate(read.examples[:6]):
        ids, mask, length = batch["input_ids"][row], batch["loss_mask"][row], lengths[row]
        assert ids[0] == tokenizer.bos_id and ids[length - 1] == tokenizer.eos_id and (ids[length:] == tokenizer.pad_id).all()
        answer_length = len(tokenizer.encode(example.target)) + 1
        assert mask.tolist() == [False] * (length - answer_length) + [True] * answer_length + [False] * (len(ids) - length)
        assert tokenizer.decode(ids[mask][:-1].tolist()) == example.target
        assert tokenizer.decode(ids[~mask][1:length - answer_length].tolist()) == example.prompt
    assert min(lengths) < max(lengths), "the check above must have covered padding"


def test_caption_and_video_batches(world, tokenizer):
    images = data.VisionTextDataset(data.read_captions(world / "captions_train.json").examples, tokenizer, 48)
    sample = images[0]
    assert sample["pixels"].shape == (3, 48, 48) and sample["loss_mask"].tolist() == [False] + [True] * (len(sample["input_ids"]) - 1)
    assert "question_id" not in sample
    vqa = data.read_vqa(world / "questions_val.json", world / "annotations_val.json", world / "captions_val.json")
    question = data.VisionTextDataset(vqa.examples, tokenizer, 48)[0]
    assert data.collate([sample, question], tokenizer.pad_id)["question_ids"] == [None, vqa.examples[0].question_id]
    videos = data.VisionTextDataset(data.read_captions(world / "video_captions_train.json", num_frames=4).examples, tokenizer, 32)
    loader = torch.utils.data.DataLoader(videos, batch_size=4, collate_fn=lambda s: data.collate(s, tokenizer.pad_id))
    batch = next(iter(loader))
    assert batch["pixels"].shape == (4, 4, 3, 32, 32) and "question_ids" not in batch
    with pytest.raises(ValueError, match="mixes images"):
        data.collate([sample, videos[0]], tokenizer.pad_id)


def test_feature_cache_runs_the_encoder_once_per_image():
    encoded = Counter()
    weights = torch.randn(3, 5, requires_grad=True)

    def encode(pixels):  # (n, 3) -> (n, 2, 5)
        encoded.update(pixels[:, 0].long().tolist())
        return (pixels @ weights).unsqueeze(1).repeat(1, 2, 1)

    cache = data.FeatureCache()
    pixels_of = lambda ids: torch.tensor([[float(i), 1.0, 2.0] for i in ids])
    first = cache.get_or_compute([1, 2, 2, 3], pixels_of([1, 2, 2, 3]), encode)
    second = cache.get_or_compute([3, 4, 1], pixels_of([3, 4, 1]), encode)
    assert encoded == Counter({1: 1, 2: 1, 3: 1, 4: 1}) and len(cache) == 4
    assert first.shape == (4, 2, 5) and not second.requires_grad and second.device.type == "cpu"
    assert torch.equal(second[0], first[3]) and torch.equal(second[2], first[0]) and torch.equal(first[1], first[2])
    assert torch.allclose(second, encode(pixels_of([3, 4, 1])).detach())
