"""Sequence-labelling tasks described in the config: CoNLL-2003 and your own tagged data.

`data.task = "conll2003"` reads `train.txt` and `dev.txt` (`WORD TAG` lines, IOB2)
from `data.tagging.dir` (default `$CONLL_DIR`); `data.task = "tagging"` reads the
`data.tagging.*` files (docs/tagging.md):

    data.tagging.train_file / dev_file / test_file   CoNLL-style columns or JSON Lines
    data.tagging.format      "" (from the extension) or conll, jsonl
    data.tagging.hf_dataset  instead of files: a hub dataset or a local directory
    data.tagging.hf_config   its config name ("" for none)
    data.tagging.tokens / tags   the word and tag columns (JSON Lines keys, HF columns)
    data.tagging.tag_names   "O,B-PER,I-PER,..." or a JSON list; "": from the training
                             data (`tagging.tag_set`: "O", then B-/I- of each type, sorted)

`build_tagging_task` makes a `TaggingTask` (a `rome_jax.data.glue.Task` whose labels
are the tags and whose metric is entity-level F1, `entities.entity_scores`), recorded
under its name so `get_task(name)` finds it. `load_tagged` reads a split and
`tagging.align` turns it into features whose labels are [N, T] tag ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rome_jax.data import tagging
from rome_jax.data.built_tasks import record_task
from rome_jax.data.custom import parse_label_names
from rome_jax.data.glue import Task
from rome_jax.data.tagging import TaggedSentences, TaggingFeatures
from rome_jax.errors import ConfigError, DataError

CONLL2003 = "conll2003"
"""The built-in task: CoNLL-2003 English NER from `data.tagging.dir`."""
TAGGING = "tagging"
"""The `data.task` value that reads tagged data from `data.tagging.*`."""
TAGGING_TASKS = (CONLL2003, TAGGING)
ENTITY_F1 = "entity_f1"
"""Tagging tasks' primary metric: entity-level micro F1 (strict IOB2, as seqeval)."""

TAGGING_DEFAULTS: Mapping[str, Any] = types.MappingProxyType(
    {
        "dir": "",
        "train_file": "",
        "dev_file": "",
        "test_file": "",
        "format": "",
        "hf_dataset": "",
        "hf_config": "",
        "tokens": "tokens",
        "tags": "tags",
        "tag_names": "",
    }
)
"""Every `data.tagging.*` key and its default (the config schema declares the same)."""

_SPLIT_KEYS = {"train": "train_file", "dev": "dev_file", "test": "test_file"}
_CONLL_FILES = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}
_HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class TaggingTask(Task):
    """A sequence-labelling task: `label_names` are the tags (ids in that order).

    files: split -> file (CoNLL columns or JSON Lines); empty with `hf_dataset`.
    """

    files: Mapping[str, str] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}), hash=False)
    data_format: str = ""
    hf_dataset: str = ""
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    tag_source: str = "the config"

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(self.label_names or ())


def is_tagging(task: Any) -> bool:
    """A `TaggingTask`, or a `data.task` name of one ("conll2003", "tagging")."""
    if isinstance(task, TaggingTask):
        return True
    return isinstance(task, str) and "".join(c for c in task.lower() if c.isalnum()) in TAGGING_TASKS


def tagging_settings(data: Any) -> dict[str, Any]:
    """The `data.tagging` keys of a data config (ConfigDict or dict), defaults filled in."""
    given = data.get("tagging") if hasattr(data, "get") else None
    values = dict(TAGGING_DEFAULTS)
    if given is not None:
        values.update({k: given[k] for k in given.keys()} if hasattr(given, "keys") else given)  # noqa: SIM118
    unknown = sorted(set(values) - set(TAGGING_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key data.tagging.{unknown[0]} (known: {', '.join(TAGGING_DEFAULTS)})")
    return values


def _files(name: str, settings: Mapping[str, Any]) -> dict[str, str]:
    if name == CONLL2003 and not any(str(settings[k]).strip() for k in _SPLIT_KEYS.values()):
        root = os.path.expandvars(os.path.expanduser(str(settings["dir"]).strip()))
        if not root:
            return {}  # the hub
        if not os.path.isdir(root):
            raise ConfigError(f"CoNLL-2003 directory {root} does not exist (config data.tagging.dir, $CONLL_DIR)")
        return {s: os.path.join(root, f) for s, f in _CONLL_FILES.items() if os.path.exists(os.path.join(root, f))}
    files = {s: str(settings[k]).strip() for s, k in _SPLIT_KEYS.items() if str(settings[k]).strip()}
    return {s: os.path.expandvars(os.path.expanduser(p)) for s, p in files.items()}


def build_tagging_task(name: str, settings: Mapping[str, Any], *, register: bool = True) -> TaggingTask:
    """The `TaggingTask` of `data.task` `name` ("conll2003" or "tagging") and its
    `data.tagging` settings. Without tag names, the training data's tags give them
    (`tagging.tag_set`). A missing file is a ConfigError naming it."""
    name = "".join(c for c in name.lower() if c.isalnum())
    if name not in TAGGING_TASKS:
        raise ConfigError(f"unknown tagging task {name!r} (known: {', '.join(TAGGING_TASKS)})")
    settings = {**TAGGING_DEFAULTS, **settings}
    files = _files(name, settings)
    hf = str(settings["hf_dataset"]).strip()
    if name == CONLL2003 and not files and not hf:
        hf = "eriktks/conll2003"
    if hf and files:
        raise ConfigError("config data.tagging: give either data files or hf_dataset, not both")
    if not hf:
        for split in ("train", "dev"):
            if split not in files:
                raise ConfigError(
                    f"config data.tagging.{_SPLIT_KEYS[split]} is empty: data.task {name!r} needs a {split} file "
                    "(or data.tagging.hf_dataset)"
                )
        for path in files.values():
            if not os.path.isfile(path):
                raise ConfigError(f"tagging data file {path} does not exist")
    tokens, tags = str(settings["tokens"]).strip(), str(settings["tags"]).strip()
    if hf and name == CONLL2003 and tags == TAGGING_DEFAULTS["tags"]:
        tags = "ner_tags"
    test = ("test",) if ("test" in files or hf) else ()
    task = TaggingTask(
        name=name,
        glue_dir_name="",
        text_columns=(tokens,),
        label_column=tags,
        label_names=("O",),
        metric=ENTITY_F1,
        train_splits=("train",),
        dev_splits=("dev",),
        test_splits=test,
        split_files=types.MappingProxyType(dict(files)),
        leaderboard_names=types.MappingProxyType({}),
        hf_config=str(settings["hf_config"]).strip(),
        hf_text_columns=(tokens,),
        hf_splits=types.MappingProxyType({s: _HF_SPLITS[s] for s in ("train", "dev") + test}),
        files=types.MappingProxyType(dict(files)),
        data_format=str(settings["format"]).strip(),
        hf_dataset=hf,
        tokens_column=tokens,
        tags_column=tags,
    )
    names = parse_label_names(settings["tag_names"], "data.tagging.tag_names")
    if names is None:
        train = load_tagged(task, "train")
        if train.tags is None:
            raise DataError(f"{train.source}: the training data has no tags")
        names = tagging.tag_set(train)
        task = dataclasses.replace(task, tag_source="the training tags")
    task = dataclasses.replace(task, label_names=names)
    if len(names) < 2:
        raise ConfigError(f"a tagging task needs at least 2 tags, {task.tag_source} give {', '.join(names)}")
    if register:
        record_task(task.name, task)
    return task


def load_tagged(task: TaggingTask, split: str, *, max_examples: int = 0) -> TaggedSentences:
    """The sentences of one split (the first `max_examples`, 0: all), their tags checked
    against the task's (`tagging.check_tags`) when the task has its tag names."""
    if split not in task.splits:
        raise DataError(f"task {task.name} has no split {split!r} (known: {', '.join(task.splits)})")
    if task.hf_dataset:
        sentences, hf_names = tagging.read_hf(
            task.hf_dataset,
            task.hf_splits[split],
            tokens_column=task.tokens_column,
            tags_column=task.tags_column,
            config_name=task.hf_config,
        )
        del hf_names
    else:
        sentences = tagging.read_tagged_file(task.files[split], task.data_format)
    if max_examples and len(sentences) > max_examples:
        sentences = sentences.subset(range(max_examples))
    if sentences.tags is not None and task.label_names != ("O",):
        tagging.check_tags(sentences, task.tag_names)
    return sentences


def load_tagging_features(
    task: TaggingTask, split: str, tokenizer: Any, max_length: int, *, max_examples: int = 0
) -> tuple[TaggedSentences, TaggingFeatures]:
    """A split's sentences and their features (labels [N, T] tag ids at each word's
    first sub-token, `tagging.TOKEN_IGNORE` elsewhere)."""
    sentences = load_tagged(task, split, max_examples=max_examples)
    return sentences, tagging.align(sentences, tokenizer, task.tag_names, max_length)


def resolved_tagging_settings(task: TaggingTask, settings: Mapping[str, Any]) -> dict[str, Any]:
    """`data.tagging` as config.json records it: absolute file paths and the tag names."""
    out = {**TAGGING_DEFAULTS, **settings}
    if task.name == TAGGING:
        for split, key in _SPLIT_KEYS.items():
            if split in task.files:
                out[key] = str(Path(task.files[split]).absolute())
    elif str(out["dir"]).strip():
        out["dir"] = str(Path(os.path.expandvars(os.path.expanduser(str(out["dir"])))).absolute())
    out["tag_names"] = json.dumps(list(task.tag_names))
    return out
