"""What people say about the synthetic shapes world: captions (5 per item, as in COCO) and
questions with 10 human answers each (as in VQAv2), drawn from templates and synonyms and always
true of the scene (stage0/world.py). Part of the offline stand-in for the input box of Figure 2
(PaLM2-VAdapter, arXiv 2402.10896), where the paper has the texts of WebLI and VTP;
stage0/synthetic.py writes them with the pictures.
"""

import random
from collections import Counter, defaultdict

from stage0.world import COLOURS, DIRECTIONS, POSITIONS, RELATIONS, SHAPES, SIZE_WORDS, relations

PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
HUMAN_ANSWERS = 10  # as in VQAv2
MOTION_WORDS = {
    "left": ("to the left", "left", "leftwards"),
    "right": ("to the right", "right", "rightwards"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
}
FROM_TO = {
    "left": "from right to left",
    "right": "from left to right",
    "up": "from the bottom to the top",
    "down": "from the top to the bottom",
}


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def definite(obj: dict) -> str:
    return f"the {obj['colour']} {obj['shape']}"


def size_adjective(rng: random.Random, size: str) -> str:
    return rng.choice(SIZE_WORDS[size] + ("", ""))  # often left out, as people do


def object_phrase(rng: random.Random, obj: dict) -> str:
    return article(
        " ".join(w for w in (size_adjective(rng, obj["size"]), obj["colour"], obj["shape"]) if w)
    )


def group_phrases(rng: random.Random, objects: list[dict]) -> list[str]:
    """'a red circle', 'two small blue squares': one phrase per (colour, shape), in random order."""
    groups = defaultdict(list)
    for obj in objects:
        groups[obj["colour"], obj["shape"]].append(obj)
    phrases = []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            phrases.append(object_phrase(rng, members[0]))
        else:
            sizes = {m["size"] for m in members}
            adjective = size_adjective(rng, sizes.pop()) if len(sizes) == 1 else ""
            words = (NUMBER_WORDS[len(members)], adjective, colour, PLURALS[shape])
            phrases.append(" ".join(w for w in words if w))
    rng.shuffle(phrases)
    return phrases


def join_list(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def image_caption(rng: random.Random, objects: list[dict]) -> str:
    template = rng.randrange(6)
    phrases = group_phrases(rng, objects)
    listing = join_list(phrases)
    if template == 0:
        return listing
    if template == 1:
        return f"there {'is' if phrases[0].startswith('a') else 'are'} {listing}"
    if template == 2:
        return (
            f"{rng.choice(('an image of', 'a picture of', 'a drawing of', 'a picture showing'))} "
            f"{listing}"
        )
    if template == 3:
        if len(objects) == 1:
            return "a single " + object_phrase(rng, objects[0]).split(" ", 1)[1]
        return f"{NUMBER_WORDS[len(objects)]} {rng.choice(('shapes', 'objects'))}: {listing}"
    # 'a red circle to the left of a red circle' says little: relate only differently named objects.
    pairs = [
        (a, b)
        for a in objects
        for b in objects
        if (a["colour"], a["shape"]) != (b["colour"], b["shape"])
    ]
    if template == 4 or not pairs:
        where = rng.choice(("at the {}", "in the {}"))
        return " and ".join(
            f"{object_phrase(rng, obj)} {where.format(obj['position'])}" for obj in objects
        )
    a, b = rng.choice(pairs)
    joiner = rng.choice((" ", " is "))
    return f"{object_phrase(rng, a)}{joiner}{rng.choice(relations(a, b))} {object_phrase(rng, b)}"


def video_caption(rng: random.Random, video: dict) -> str:
    shape, motion, (start, end) = (
        video["shape"],
        video["motion"],
        (video["colours"][0], video["colours"][-1]),
    )
    template = rng.randrange(5)
    subject = object_phrase(rng, {"shape": shape, "colour": start, "size": video["size"]})
    if motion != "colour":
        verb, direction = (
            rng.choice(("moves", "slides", "travels", "goes")),
            rng.choice(MOTION_WORDS[motion]),
        )
        return (
            f"{subject} {verb} {direction}",
            f"{subject} moving {direction}",
            f"the {start} {shape} {verb} {direction}",
            f"{subject} {verb} {FROM_TO[motion]}",
            f"{subject} is moving {direction}",
        )[template]
    colour_word = rng.choice(("colour", "color"))
    return (
        f"{article(shape)} changes {colour_word} from {start} to {end}",
        f"{subject} turns {end}",
        f"the {start} {shape} becomes {end}",
        f"{article(shape)} that turns from {start} to {end}",
        f"{subject} changing into {end}",
    )[template]


def image_question(rng: random.Random, objects: list[dict]) -> tuple[str, str, str, str] | None:
    """One (question, answer, question_type, answer_type), or None if the drawn kind does
    not fit."""
    shapes, colours = Counter(o["shape"] for o in objects), Counter(o["colour"] for o in objects)
    pairs = Counter((o["colour"], o["shape"]) for o in objects)
    unique = [o for o in objects if pairs[o["colour"], o["shape"]] == 1]  # as 'the red circle'
    # present: ask about what is there, so that yes/no answers and counts balance.
    kind, present = rng.randrange(7), rng.random() < 0.5
    if kind == 0:
        obj = rng.choice(objects)
        if shapes[obj["shape"]] == 1:
            colour_word = rng.choice(("colour", "color"))
            return (
                f"what {colour_word} is the {obj['shape']}?",
                obj["colour"],
                "what color is the",
                "other",
            )
    elif kind == 1:
        obj = rng.choice(objects)
        if colours[obj["colour"]] == 1:
            return (
                f"what shape is the {obj['colour']} object?",
                obj["shape"],
                "what shape is the",
                "other",
            )
    elif kind == 2:
        shape = rng.choice(list(shapes) if present else SHAPES)
        colour = rng.choice(list(colours) if present else list(COLOURS))
        things = rng.choice(("shapes", "objects"))
        total = rng.choice(("how many shapes are there?", "how many objects are in the picture?"))
        question, count = rng.choice(
            (
                (f"how many {PLURALS[shape]} are there?", shapes[shape]),
                (f"how many {colour} {things} are there?", colours[colour]),
                (total, len(objects)),
            )
        )
        return question, str(count), "how many", "number"
    elif kind == 3:
        colour, shape = (
            rng.choice(list(pairs)) if present else (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        )
        return (
            f"is there {article(colour)} {shape}?",
            "yes" if (colour, shape) in pairs else "no",
            "is there a",
            "yes/no",
        )
    elif kind == 4 and unique:
        obj = rng.choice(unique)
        return f"where is {definite(obj)}?", obj["position"], "where is the", "other"
    elif kind == 5 and len(unique) >= 2:
        a, b = rng.sample(unique, 2)
        relation = rng.choice(relations(a, b) if present else RELATIONS)
        return (
            f"is {definite(a)} {relation} {definite(b)}?",
            "yes" if relation in relations(a, b) else "no",
            "is the",
            "yes/no",
        )
    elif kind == 6 and unique and len(objects) >= 2:
        b = rng.choice(unique)
        relation = rng.choice(relations(rng.choice([o for o in objects if o is not b]), b))
        matching = [o for o in objects if o is not b and relation in relations(o, b)]
        if len(matching) == 1:
            return (
                f"which shape is {relation} {definite(b)}?",
                matching[0]["shape"],
                "which shape is",
                "other",
            )
    return None


def video_questions(video: dict) -> list[tuple[str, str, str, str]]:
    shape, motion, (start, end) = (
        video["shape"],
        video["motion"],
        (video["colours"][0], video["colours"][-1]),
    )
    moves, changes = ("yes", "no") if motion != "colour" else ("no", "yes")
    questions = [
        (f"does the {shape} move?", moves, "does the", "yes/no"),
        (f"does the {shape} change color?", changes, "does the", "yes/no"),
    ]
    if motion != "colour":
        return questions + [
            (f"which way does the {shape} move?", motion, "which way does the", "other"),
            (
                f"in which direction is the {start} {shape} moving?",
                motion,
                "in which direction is",
                "other",
            ),
            (f"what color is the {shape}?", start, "what color is the", "other"),
            ("what shape is moving?", shape, "what shape is", "other"),
        ]
    return questions + [
        (f"what color does the {shape} turn?", end, "what color does the", "other"),
        (f"what color is the {shape} at the start?", start, "what color is the", "other"),
        (f"what color is the {shape} at the end?", end, "what color is the", "other"),
        ("what shape changes color?", shape, "what shape", "other"),
    ]


def surface_variants(answer: str) -> list[str]:
    variants = [answer.capitalize(), answer + "."]
    if answer.isdigit() and int(answer) < len(NUMBER_WORDS):
        variants.append(NUMBER_WORDS[int(answer)])
    return variants


def human_answers(rng: random.Random, answer: str) -> list[dict]:
    """10 answers as people give them: mostly the truth (always at least 6 times verbatim, so it is
    the majority), sometimes spelled differently ('Red', 'two'), now and then wrong."""
    vocabulary = next(
        (v for v in (list(COLOURS), SHAPES, POSITIONS, DIRECTIONS, ("yes", "no")) if answer in v),
        [str(n) for n in range(5)],
    )
    answers = []
    for k in range(HUMAN_ANSWERS):
        draw = rng.random()
        if k < 6 or draw < 0.6:
            answers.append((answer, "yes"))
        elif draw < 0.9:
            answers.append((rng.choice(surface_variants(answer)), "yes"))
        else:
            answers.append((rng.choice([v for v in vocabulary if v != answer]), "maybe"))
    rng.shuffle(answers)
    return [
        {"answer": a, "answer_confidence": c, "answer_id": i + 1}
        for i, (a, c) in enumerate(answers)
    ]


def distinct(make, count: int) -> list:
    """Up to `count` different results of make() (random templates and synonyms)."""
    results = []
    for _ in range(50 * count):
        if len(results) == count:
            break
        made = make()
        if made is not None and made not in results:
            results.append(made)
    return results
