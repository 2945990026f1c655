"""A run's set-up: `set_up` checks the config, prepares the workdir, loads the model,
tokenizer and data, and returns a `Run` (what the stages read, unchanged while
training) with the pretrained parameters.

run, params = set_up(config, workdir, overwrite=False)
for batch in run.iterator(stage.number): ...
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import ml_collections
from jax.sharding import Mesh

from rome_jax.config import run_config
from rome_jax.data import BatchIterator, Features, length_buckets, load_examples, read_text_file, tokenize_examples
from rome_jax.data.buckets import LengthBuckets
from rome_jax.data.glue import Task
from rome_jax.data.metrics import primary_metric
from rome_jax.data.tagging import TaggedSentences, TaggingFeatures
from rome_jax.data.tagging_task import TaggingTask, load_tagging_features
from rome_jax.data.tasks import task_from_config
from rome_jax.encoder.config import ModelConfig
from rome_jax.errors import ConfigError, RomeError
from rome_jax.serving.api import MultiExitModel, load_pretrained, resolve_model_dir
from rome_jax.sharding import make_mesh, replicated
from rome_jax.training import distributed
from rome_jax.training import step as ts
from rome_jax.training.stages import Stage, make_stage_optimizer, plan_stages
from rome_jax.training.step import Params, TrainState
from rome_jax.training.workdir import prepare_workdir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Run:
    """What the set-up prepares and the stages read; nothing in it changes while training."""

    config: ml_collections.ConfigDict  # resolved and validated
    workdir: Path  # absolute
    is_writer: bool  # process 0 writes the workdir's files
    task: Task  # a GLUE task or a data.custom.* one (rome_jax.data.tasks.CustomTask)
    model: MultiExitModel  # without params (the run's parameters live in the train state)
    train_features: Features
    dev_features: dict[str, Features]  # by dev split
    stage2_features: Features | None  # FastBERT's unlabeled stage-2 data, or None
    mesh: Mesh
    buckets: LengthBuckets  # the sequence lengths batches are cut to (data.buckets)
    stages: tuple[Stage, ...]
    metric: str  # the task's primary metric
    target: TrainState  # the restore target: jax.ShapeDtypeStruct leaves (shapes, dtypes, replicated shardings)
    # tagging tasks: each dev split's sentences and their word map (what entity F1 is scored on)
    dev_tagging: dict[str, tuple[TaggedSentences, TaggingFeatures]] = dataclasses.field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.stages[-1].last_step

    @property
    def num_exits(self) -> int:
        return self.model.config.num_exits

    @property
    def label_names(self) -> list[str] | None:
        return list(self.task.label_names) if self.task.label_names else None

    def iterator(self, stage_number: int = 1) -> BatchIterator:
        """The shuffled training batches of a stage (stage 2 may read other data)."""
        features = (
            self.stage2_features if stage_number == 2 and self.stage2_features is not None else self.train_features
        )
        return _training_batches(self.config, features, self.buckets)


def _training_batches(config: ml_collections.ConfigDict, features: Features, buckets: LengthBuckets) -> BatchIterator:
    t = config.train
    return BatchIterator(
        features,
        t.batch_size,
        shuffle=True,
        seed=t.seed,
        drop_remainder=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        buckets=buckets,
    )


def set_up(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, overwrite: bool) -> tuple[Run, Params]:
    """Resolves and checks the config, prepares the workdir, loads the model, tokenizer and data.

    Returns the `Run` and the pretrained parameters (where a fresh run starts).
    """
    config = run_config.resolve(config)
    run_config.validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    workdir = Path(workdir).absolute()
    is_writer = jax.process_index() == 0
    if not overwrite:
        # every process checks the workdir (reading only) before anything is loaded or
        # written: a workdir holding another run fails every process alike, together
        # (after the barrier: process 0 leaving first would end the runtime under the others)
        problem = None
        try:
            prepare_workdir(workdir, config, overwrite=False, is_writer=False)
        except RomeError as e:
            problem = e
        if jax.process_count() > 1:
            distributed.barrier("workdir checked")
        if problem is not None:
            raise problem

    # The model and the data before the workdir is written: a missing model, a bad row
    # in the training or dev file leaves no trace there (and --overwrite deletes nothing).
    task = task_from_config(config)  # a GLUE task, or one described by data.custom.*
    model_dir = resolve_model_dir(config.model.name_or_path)
    run_config.check_model_fit(config, ModelConfig.from_json_file(os.path.join(model_dir, "config.json")))
    model = load_pretrained(
        model_dir,
        task.num_labels,
        dtype=config.model.dtype,
        seed=config.train.seed,
        ignore_mismatched_sizes=config.model.reinit_classifier,
        attention_kernel=config.model.attention,
        exit_pooling=config.model.exit_pooling,
    )
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model.name_or_path} has no tokenizer files (tokenizer.json or vocab.txt)")
    dev_tagging: dict[str, tuple[TaggedSentences, TaggingFeatures]] = {}
    if isinstance(task, TaggingTask):
        train_features, dev_tagging = load_tagging_data(config, task, model.tokenizer)
        dev_features, stage2_features = {s: t.features for s, (_, t) in dev_tagging.items()}, None
    else:
        train_features, dev_features, stage2_features = load_data(config, task, model.tokenizer)

    if is_writer:
        prepare_workdir(workdir, config, overwrite=overwrite, is_writer=True)
        save_tokenizer(model.tokenizer, workdir / "tokenizer")
    distributed.barrier("workdir prepared")

    mesh = make_mesh()
    logger.info(
        "data-parallel over %d %s device(s) in %d process(es)",
        mesh.size,
        jax.devices()[0].platform,
        jax.process_count(),
    )
    buckets = length_buckets(config.data.max_length, config.data.buckets)
    steps_per_epoch = [
        _training_batches(config, features, buckets).steps_per_epoch
        for features in (train_features, train_features if stage2_features is None else stage2_features)
    ]
    stages = plan_stages(config, steps_per_epoch, task.is_regression)
    # The restore target: the state's structure, shapes and shardings (nothing allocated).
    tx, _ = make_stage_optimizer(config, stages[0], model.params)
    shapes = jax.eval_shape(lambda p: ts.create_train_state(p, tx, config.train.seed), model.params)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes)
    run = Run(
        config=config,
        workdir=workdir,
        is_writer=is_writer,
        task=task,
        model=dataclasses.replace(model, params=None),
        train_features=train_features,
        dev_features=dev_features,
        stage2_features=stage2_features,
        mesh=mesh,
        buckets=buckets,
        stages=tuple(stages),
        metric=primary_metric(task),
        target=target,
        dev_tagging=dev_tagging,
    )
    return run, model.params


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Writes the tokenizer's files to `directory` once (atomically: a temporary
    directory renamed); a directory already there is kept."""
    if directory.is_dir():
        return
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".tokenizer."))
    tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, directory)


def load_tagging_data(
    config: ml_collections.ConfigDict, task: TaggingTask, tokenizer: PreTrainedTokenizerBase
) -> tuple[Features, dict[str, tuple[TaggedSentences, TaggingFeatures]]]:
    """A tagging task's training features (labels [N, T] tag ids) and each dev split's
    sentences with their features."""
    d = config.data
    _, train = load_tagging_features(task, "train", tokenizer, d.max_length, max_examples=d.train_max_examples)
    dev = {}
    for split in task.dev_splits:
        sentences, features = load_tagging_features(
            task, split, tokenizer, d.max_length, max_examples=d.eval_max_examples
        )
        if sentences.tags is None:
            raise ConfigError(f"dev split {split} of task {task.name} has no tags ({sentences.source})")
        dev[split] = (sentences, features)
    return train.features, dev


def load_data(
    config: ml_collections.ConfigDict, task: Task, tokenizer: PreTrainedTokenizerBase
) -> tuple[Features, dict[str, Features], Features | None]:
    """(train features, dev features by split, stage-2 features or None), each tokenized
    to data.max_length (cached in data.cache_dir)."""
    d = config.data
    source_args = dict(source=d.source, data_dir=d.dir or None)
    cache = d.cache_dir or None
    train = load_examples(task, "train", max_examples=d.train_max_examples, **source_args)
    train_features = tokenize_examples(train, tokenizer, d.max_length, cache_dir=cache)
    dev = {}
    for split in task.dev_splits:
        examples = load_examples(task, split, max_examples=d.eval_max_examples, **source_args)
        if not examples.has_labels:
            raise ConfigError(f"dev split {split} of task {task.name} has no labels")
        dev[split] = tokenize_examples(examples, tokenizer, d.max_length, cache_dir=cache)
    stage2 = None
    if d.stage2_unlabeled:  # FastBERT: stage 2 learns from the final exit, not from labels
        if d.stage2_unlabeled in task.splits:
            unlabeled = load_examples(task, d.stage2_unlabeled, max_examples=d.train_max_examples, **source_args)
        else:
            unlabeled = read_text_file(task, d.stage2_unlabeled)
        stage2 = tokenize_examples(unlabeled, tokenizer, d.max_length, cache_dir=cache)
    return train_features, dev, stage2
