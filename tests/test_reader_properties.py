"""Property tests of the JSON readers (COCO captions official and Karpathy's, VQAv2, video
folders) on generated bad input: missing, extra and mistyped fields, huge, negative and duplicate
ids, odd unicode, nested garbage, files that are no JSON object, images missing or not images,
frame folders without frames. Each reader loads exactly what a small model written here expects
(a table of the files on disk, each format's rules in a few lines) or raises DataError naming
file and field, never another exception; with on_bad_sample="skip" it loads what the model
expects and counts every left-out sample. The store and the Hypothesis settings: reader_store.py."""

import functools
import json
import os
import re
from collections import defaultdict

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from reader_store import FILES, IMAGE, NAMES, OUTSIDE

from support import readers
from support.data_checks import DataError

# skip mode's report of what it skipped; PIL's, on what it could read of a damaged file
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --- generated input -------------------------------------------------------------------------


nested_garbage = st.recursive(
    st.none() | st.booleans() | st.floats(),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=4,
)


def mostly(good, bad):
    """Draws from `good` three times in four, else from `bad`."""
    return st.sampled_from([good, good, good, bad]).flatmap(lambda strategy: strategy)


def records(**fields):
    """Entries with these fields (and maybe an extra one); or some missing, or not a dict."""
    return mostly(
        st.fixed_dictionaries(fields, optional={"extra": nested_garbage}),
        st.fixed_dictionaries({}, optional=fields) | nested_garbage,
    )


odd_ids = st.sampled_from([-2, 10**30, -(2**63)]) | st.text(max_size=2) | nested_garbage
ids = mostly(st.integers(0, 3), odd_ids)  # few, so that they repeat
names = mostly(st.sampled_from(NAMES), st.integers() | nested_garbage)
blank = st.sampled_from(["", " ", "\u3000", "\n"])
texts = mostly(st.text(max_size=6), blank | st.integers() | nested_garbage)
tasks = st.sampled_from([(False, None), (True, None), (True, 1), (True, 3)])  # videos, num_frames
image_lists = st.lists(records(id=ids, file_name=names), max_size=5)
coco_files = st.fixed_dictionaries(
    {"images": image_lists, "annotations": st.lists(records(image_id=ids, caption=texts))}
)
karpathy_fields = dict(
    split=mostly(st.sampled_from(["train", "restval", "val", "test"]), blank | nested_garbage),
    filepath=mostly(st.sampled_from(["images", "videos", "", "..", "/srv"]), st.integers()),
    filename=names,
    sentences=mostly(st.lists(records(raw=texts), max_size=3), nested_garbage),
)
karpathy_entries = records(cocoid=ids, **karpathy_fields) | records(imgid=ids, **karpathy_fields)
karpathy_first = st.fixed_dictionaries({"cocoid": ids, **karpathy_fields})  # so Karpathy's file
ten_answers = st.lists(st.fixed_dictionaries({"answer": st.text(max_size=1)}), min_size=10)
human_answers = mostly(ten_answers.map(lambda ten: ten[:10]), st.lists(records(answer=texts)))
vqa_files = st.fixed_dictionaries(
    {
        "questions": st.lists(records(question_id=ids, image_id=ids, question=texts), max_size=5),
        "annotations": st.none()
        | st.lists(records(question_id=ids, multiple_choice_answer=texts, answers=human_answers)),
        "images": st.none() | image_lists,  # None: images named after data_subtype and id
        "data_subtype": mostly(st.just("val2014"), st.sampled_from(["{}", "{0}"]) | nested_garbage),
    }
)
json_scalars = st.none() | st.integers() | st.text(max_size=3)
json_values = st.recursive(json_scalars, st.lists, max_leaves=3) | st.dictionaries(
    st.sampled_from(["images", "questions", "annotations"]), json_scalars
)
not_json_objects = (  # None: no file there
    st.binary(max_size=12)
    | st.sampled_from([b"[" * 10**5, b"1" * 5000, b"\xff", None, "folder"])
    | json_values.map(lambda value: json.dumps(value).encode())
)


# --- the model: what each reader should load -------------------------------------------------


def field(entry, name):
    return entry.get(name) if isinstance(entry, dict) else None


def whole(value):  # an id: a JSON integer (true and false are not)
    return value if type(value) is int else None


def text(value):  # text as the readers keep it: stripped, not empty
    return value.strip() if isinstance(value, str) and value.strip() else None


def failing(where, **checks) -> list:  # [(where, field)] of the checks (field=is_bad) that fail
    return [(where, name) for name, is_bad in checks.items() if is_bad]


def verdict(name: str):
    """OUTSIDE the data folder (absolute, or climbing out of it), else FILES[name] or None."""
    depth = 0
    for part in name.split("/"):
        depth += -1 if part == ".." else part not in ("", ".")
        if depth < 0:
            return OUTSIDE
    return OUTSIDE if name.startswith("/") else FILES.get(os.path.normpath(name))


def serves(name, task) -> bool:
    (videos, num_frames), what = task, verdict(name)
    if not videos:
        return what == IMAGE
    return isinstance(what, int) and what > 0 and num_frames in (None, what)


def expected_images(named, task, store):
    """named: [(where, image id, usable name or None)] -> ({image id: path, or None when it does
    not load}, problems). An id loads when the usable names of its entries are one name, of a file
    that serves the task (different names could each be the id's image)."""
    uses, images, problems = defaultdict(list), {}, []
    for where, image_id, name in named:
        uses[image_id] += [(where, name)] if name else []
    for image_id, entries in uses.items():
        used = {name for _, name in entries}
        fine = len(used) == 1 and serves(min(used), task)
        images[image_id] = store / min(used) if fine else None
        for where, name in entries:
            problems += failing(where, id=len(used) > 1, file_name=not serves(name, task))
    return images, problems


def coco_images(entries, path):
    """The official `images` list -> (named, as expected_images takes it; problems)."""
    named, problems = [], []
    for index, entry in enumerate(entries):
        where = f"{path}: images[{index}]"
        image_id, name = whole(field(entry, "id")), text(field(entry, "file_name"))
        usable = name is not None and verdict(name) != OUTSIDE
        problems += failing(where, id=image_id is None, file_name=not usable)
        named += [(where, image_id, name if usable else None)] if image_id is not None else []
    return named, problems


def expected_captions(store, path, content, task):
    """-> ((examples, images), problems, causes of left-out captions)."""
    named, problems = coco_images(content["images"], path)
    images, found = expected_images(named, task, store)
    problems, causes, examples = problems + found, set(), []
    for index, entry in enumerate(content["annotations"]):
        where = f"{path}: annotations[{index}]"
        image_id, caption = whole(field(entry, "image_id")), text(field(entry, "caption"))
        bad = failing(where, image_id=image_id not in images, caption=caption is None)
        problems += bad
        if bad or images[image_id] is None:
            causes.add(where if bad else image_id)
        else:
            examples.append((image_id, images[image_id], caption))
    return (examples, {i: p for i, p in images.items() if p}), problems, causes


def expected_karpathy(store, path, entries, split, task):
    """As expected_captions; `split` keeps its entries (train takes restval too), None all."""
    wanted = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}}.get(split)
    named, problems, captions = [], [], []
    for index, entry in enumerate(entries):
        where = f"{path}: images[{index}]"
        if wanted is not None and text(field(entry, "split")) not in wanted:  # another split's
            problems += failing(where, split=text(field(entry, "split")) is None)
            continue
        id_field = "cocoid" if isinstance(entry, dict) and "cocoid" in entry else "imgid"
        image_id, filename = whole(field(entry, id_field)), text(field(entry, "filename"))
        folder, sentences = field(entry, "filepath") or "", field(entry, "sentences")  # no folder
        bad = failing(where, **{id_field: image_id is None}, filename=filename is None)
        malformed = not isinstance(sentences, list) or not isinstance(folder, str)
        bad += failing(where, sentences=malformed)
        if not bad:  # as os.path.join: an absolute filename stands alone
            name = filename if not folder or filename.startswith("/") else f"{folder}/{filename}"
            bad = failing(where, filepath=verdict(name) == OUTSIDE)
        problems += bad
        if not bad:
            named.append((where, image_id, name))
            for number, sentence in enumerate(sentences):
                caption = text(field(sentence, "raw"))
                problems += failing(f"{where}.sentences[{number}]", raw=caption is None)
                captions += [(image_id, caption)] if caption else []
    images, found = expected_images(named, task, store)
    examples = [(i, images[i], caption) for i, caption in captions if images[i] is not None]
    causes = {where for where, _ in problems} | {i for i, _ in captions if images[i] is None}
    return (examples, {i: p for i, p in images.items() if p}), problems + found, causes


def expected_answers(path, entries):
    """-> ({question id: (answer, 10 human answers), or None: two annotations differ}, problems)."""
    answers, problems = {}, []
    for index, entry in enumerate(entries):
        where = f"{path}: annotations[{index}]"
        question_id = whole(field(entry, "question_id"))
        answer, humans = text(field(entry, "multiple_choice_answer")), field(entry, "answers")
        ten = isinstance(humans, list) and len(humans) == 10
        ten = ten and all(isinstance(field(human, "answer"), str) for human in humans)
        bad = failing(where, question_id=question_id is None, answers=not ten)
        problems += bad + failing(where, multiple_choice_answer=answer is None)
        if bad or answer is None:
            continue
        found = (answer, [human["answer"] for human in humans])
        if answers.setdefault(question_id, found) != found:
            answers[question_id] = None
            problems.append((where, "question_id"))
    return answers, problems


def expected_vqa(store, paths, content):
    """-> ((examples, references), problems, causes of left-out questions). Without an images
    file, images are COCO_<data_subtype>_<12-digit id>.jpg in the store."""
    questions_path, annotations_path, images_path = paths
    problems, answers, images, causes, examples, references = [], {}, {}, set(), [], {}
    if content["images"] is not None:
        named, problems = coco_images(content["images"], images_path)
        images, found = expected_images(named, (False, None), store)
        problems += found
    if content["annotations"] is not None:
        answers, found = expected_answers(annotations_path, content["annotations"])
        problems, causes = problems + found, {where for where, _ in found}
    for index, entry in enumerate(content["questions"]):
        where = f"{questions_path}: questions[{index}]"
        question_id, image_id = whole(field(entry, "question_id")), whole(field(entry, "image_id"))
        question = text(field(entry, "question"))
        bad = failing(where, question_id=question_id is None, image_id=image_id is None)
        bad += failing(where, question=question is None)
        if not bad and content["images"] is None:
            name = f"COCO_{content['data_subtype']}_{image_id:012d}.jpg"
            path = store / name if FILES.get(name) == IMAGE else None
            bad = failing(where, image_id=path is None)
        elif not bad:
            bad = failing(where, image_id=image_id not in images)
            if not bad and (path := images[image_id]) is None:
                causes.add(image_id)  # counted with the image
                continue
        if not bad and content["annotations"] is not None:
            bad = failing(where, question_id=question_id not in answers)
        problems, causes = problems + bad, causes | {where for where, _ in bad}
        if bad or (content["annotations"] is not None and answers[question_id] is None):
            continue  # two annotations that differ were counted there
        answer, humans = answers.get(question_id, ("", []))
        references[question_id] = humans
        examples.append((question_id, image_id, path, f"question: {question} answer:", answer))
    return (examples, references), problems, causes


# --- the properties --------------------------------------------------------------------------


def check(read, summary, expected, problems, causes):
    """read(on_bad_sample) loads `expected` (as summary(annotations) shows it) or, when the model
    found problems and on_bad_sample="error", raises DataError naming the file and field of one;
    with "skip" it loads `expected` and counts at least one bad sample per cause of a drop."""
    try:
        strict = read("error")
    except DataError as error:
        named = [(w, f) for w, f in problems if w in str(error) and f"'{f}'" in str(error)]
        assert named, (str(error), problems)
    else:
        assert not problems and summary(strict) == expected, problems
    lenient = read("skip")
    assert summary(lenient) == expected
    assert sum(lenient.skipped.values()) >= len(causes), (lenient.skipped, causes)
    assert bool(lenient.skipped) == bool(problems), (lenient.skipped, problems)


def captions_of(annotations):
    return [(e.image_id, e.path, e.target) for e in annotations.examples], annotations.images


def questions_of(loaded):
    examples = [(e.question_id, e.image_id, e.path, e.prompt, e.target) for e in loaded.examples]
    return examples, loaded.references


@given(content=coco_files, task=tasks)
@example(  # a name too long for the file system
    content={"images": [{"id": 0, "file_name": "a" * 300}], "annotations": []}, task=(False, None)
)
def test_official_coco_captions_and_video_folders(store, content, task):
    path = store / "captions.json"
    path.write_text(json.dumps(content))
    read = functools.partial(readers.read_captions, path, store, None, task[1], videos=task[0])
    check(read, captions_of, *expected_captions(store, path, content, task))


@given(
    first=karpathy_first,
    entries=st.lists(karpathy_entries, max_size=3),
    split=st.sampled_from([None, "train", "val", "test"]),
    task=tasks,
)
@example(first={"sentences": []}, entries=[None], split=None, task=(False, None))  # not a dict
def test_karpathy_split_file(store, first, entries, split, task):
    path, entries = store / "dataset_coco.json", [first, *entries]
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    read = functools.partial(readers.read_captions, path, store, split, task[1], videos=task[0])
    check(read, captions_of, *expected_karpathy(store, path, entries, split, task))


@given(content=vqa_files)
def test_vqav2_questions_and_annotations(store, content):
    files = {key: store / f"vqa_{key}.json" for key in ("questions", "annotations", "images")}
    for key, path in files.items():
        path.write_text(json.dumps(content if key == "questions" else {key: content[key]}))
    given_files = [path if content[key] is not None else None for key, path in files.items()]
    read = functools.partial(readers.read_vqa, *given_files, store, None)
    check(read, questions_of, *expected_vqa(store, list(files.values()), content))


@given(content=not_json_objects, role=st.sampled_from(["captions", "questions", "annotations"]))
def test_a_file_that_is_not_the_json_object_a_reader_needs(store, content, role):
    path = store / ("videos" if content == "folder" else "broken.json")
    if content != "folder":
        path.unlink(missing_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    (store / "no_questions.json").write_text('{"questions": []}')
    files = [path] if role != "annotations" else [store / "no_questions.json", path]
    read = readers.read_captions if role == "captions" else readers.read_vqa
    for on_bad_sample in ("error", "skip"):
        with pytest.raises(DataError, match=re.escape(str(path))):
            read(*files, on_bad_sample=on_bad_sample)
