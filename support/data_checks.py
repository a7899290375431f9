"""Checks on data files, shared by the readers (support/readers.py) and the data box (data.py).

A file that is missing or malformed, or a sample that lacks a field, is a `DataError` whose message
names the file, the field and what was expected; with on_bad_sample="skip" a bad sample is counted
instead and the counts are reported once (`BadSamples`), so a single bad file never stops a run.
"""

import json
import os
import warnings
from collections import Counter
from pathlib import Path


class DataError(ValueError):
    """A data file is missing, unreadable or lacks a field; the message names file, field and
    expectation."""


class BadSamples:
    """on_bad_sample="error" raises DataError at once; "skip" counts the reason and reports all
    counts in one warning at the end, so a single bad file never stops a run."""

    def __init__(self, on_bad_sample: str):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample={on_bad_sample!r}; expected 'error' or 'skip'")
        self.skip, self.counts = on_bad_sample == "skip", Counter()

    def __call__(self, reason: str, message: str, count: int = 1) -> None:
        if not self.skip:
            raise DataError(message)
        self.counts[reason] += count

    def report(self, source) -> Counter:
        if self.counts:
            counts = ", ".join(
                f"{count} x {reason}" for reason, count in sorted(self.counts.items())
            )
            warnings.warn(f"{source}: skipped bad samples: {counts}", stacklevel=3)
        return self.counts


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; expected a JSON annotation file") from None
    except OSError as error:  # a folder, say
        raise DataError(f"{path}: cannot read ({error.strerror}); expected a JSON file") from None
    # ValueError: not JSON, not UTF-8, or an integer of over 4300 digits (Python's limit);
    # RecursionError: arrays or objects nested too deep for the parser
    except (ValueError, RecursionError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def top_level(data: dict, key: str, path: Path) -> list:
    # Without the list itself the whole file is wrong: no "skip" for this.
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: top-level field '{key}' is missing; expected a list")
    return data[key]


def required(entry, name: str, kind: type, where: str, bad: BadSamples):
    """entry[name] if it is a `kind` (and not empty for text), else report and return None."""
    value = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        bad(
            "missing field",
            f"{where} field '{name}' is missing or not {kind.__name__}; expected {kind.__name__}",
        )
        return None
    if kind is str and not value.strip():
        bad(f"empty {name}", f"{where} field '{name}' is empty; expected a non-empty {name}")
        return None
    return value.strip() if kind is str else value


def inside_root(
    image_root: Path, name: str, where: str, fields: str, bad: BadSamples
) -> Path | None:
    """image_root / name, if `name` is a relative path that stays inside image_root; else report.
    Checked on the text, not on the resolved path, so the image folder itself may be a symlink."""
    if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
        bad(
            "image path outside the data folder",
            f"{where} field {fields} is {name!r}, outside the data folder "
            f"{image_root}; expected a path relative to it",
        )
        return None
    return image_root / name
