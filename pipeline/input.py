"""The tf.data reader of the preprocessing output, used by the search, retraining and evaluation.

Reads `DIR/<split>/part-*.tfrecord.gz` (GZIP TFRecords of tf.Example with one int64 per field under
the field's name and a float `label`, as written by `preprocessing`) and yields `(ids, labels)`:

- `ids`: int32 [batch, num_fields], columns in `DataSchema.field_names` order. int32 rather than
  int64 because embedding gathers on accelerators are cheaper with int32 indices and the batch is
  half the size; every vocabulary size must therefore be < 2**31 (checked).
- `labels`: float32 [batch].

Pipeline: shard files (sorted names) -> shuffle file order (seeded) -> interleave GZIP readers
(parallel), each yielding chunks of `CHUNK_RECORDS` serialized records -> shuffle chunks (a buffer
of ~`shuffle_buffer` records) -> regroup into windows of `SHUFFLE_WINDOW` records, permuted ->
repeat -> rebatch to the batch size -> `tf.io.parse_example` on the whole batch (parallel map) ->
stack into one [B, M] tensor and cast once -> prefetch. Carrying chunks rather than single records
through tf.data is what makes the reader fast (per-element overhead is paid once per chunk); the
shuffle is two-level (chunks over a large buffer, then records within a window), so records that
were neighbours in a shard share a batch more often than under a record-level shuffle (a window
mixes SHUFFLE_WINDOW / CHUNK_RECORDS = 64 chunks).

Sharding for `strategy.distribute_datasets_from_function`: with an `InputContext` the batch size
given is the global one and each pipeline batches `input_context.get_per_replica_batch_size`.
Pipelines take whole files (file i goes to pipeline i mod n) when there are at least as many files
as pipelines, else every pipeline reads all files in a fixed order and keeps every n-th chunk.
Either way each record goes to exactly one pipeline.

Determinism: with a seed, file order, interleaving and the shuffle are deterministic; without one
(and shuffling) the interleave may return records in arrival order for speed.

Cost (measured on 200k Criteo-shaped records, batch 2000): ~8-10 us of CPU per example, of which
GZIP inflation is ~2.5 us and `parse_example` of 39 separate int64 features ~3.7 us; the record
format, not the pipeline, is the floor (a single packed int64 list feature parses in ~0.8 us).
"""
from __future__ import annotations

import gzip
import struct
import time
from typing import Any

import tensorflow as tf

from configs.cli import UsageError
from configs.features import DataSchema

RECORD_PATTERN = "part-*.tfrecord.gz"
DEFAULT_SHUFFLE_BUFFER = 100_000
READ_BUFFER_BYTES = 1 << 20
MAX_CYCLE_LENGTH = 16
CHUNK_RECORDS = 128   # records per tf.data element until batching
SHUFFLE_WINDOW = 8192  # records permuted together after the chunk shuffle
INT32_LIMIT = 2**31


class InputError(UsageError):
    """The preprocessing output cannot be read as the schema describes; the message names the
    directory, file or field."""


def list_shards(data_dir: str, split: str) -> list[str]:
    """The split's shard files, sorted; an error naming the directory if there are none."""
    split_dir = tf.io.gfile.join(str(data_dir), split)
    if not tf.io.gfile.isdir(split_dir):
        raise InputError(f"split directory {split_dir} does not exist: {data_dir} is not the "
                         f"output of `python -m preprocessing.run` or has no {split!r} split")
    files = sorted(tf.io.gfile.glob(tf.io.gfile.join(split_dir, RECORD_PATTERN)))
    if not files:
        raise InputError(f"no {RECORD_PATTERN} files in {split_dir}")
    return files


def _first_record(path: str) -> bytes | None:
    """The first record of a GZIP TFRecord file (None if the file has none)."""
    with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as fh:
        header = fh.read(12)
        if len(header) == 0:
            return None
        if len(header) < 12:
            raise InputError(f"{path}: truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        data = fh.read(length)
        if len(data) != length:
            raise InputError(f"{path}: truncated TFRecord (expected {length} bytes)")
        return data


def check_records(files: list[str], schema: DataSchema) -> None:
    """Checks the first record of the first non-empty shard against the schema: every field an
    int64 scalar, the label a float. Raises InputError naming the field and the file."""
    for path in files:
        data = _first_record(path)
        if data is None:
            continue
        example = tf.train.Example.FromString(data)
        features = example.features.feature
        expected = [(name, "int64_list") for name in schema.field_names]
        expected.append((schema.label, "float_list"))
        for name, kind in expected:
            what = "label" if name == schema.label else "schema field"
            if name not in features:
                present = ", ".join(sorted(features)) or "none"
                raise InputError(
                    f"{what} {name!r} is absent from the records of {path} (features present: "
                    f"{present}); the data and schema.json come from different preprocessing runs")
            feature = features[name]
            got = feature.WhichOneof("kind")
            values = getattr(feature, got).value if got else []
            if got != kind or len(values) != 1:
                raise InputError(f"{what} {name!r} in {path} is a {got} of {len(values)} values; "
                                 f"expected one {kind.split('_')[0]}")
        return
    raise InputError(f"all {len(files)} shard files of {tf.io.gfile.dirname(files[0])} are empty")


def _check_schema(schema: DataSchema) -> None:
    too_big = [f.name for f in schema.fields if f.vocab_size >= INT32_LIMIT]
    if too_big:
        raise InputError(f"vocabulary sizes of {too_big} do not fit int32 ids (limit 2**31)")
    if not schema.fields:
        raise InputError("schema has no fields")


def make_parse_fn(schema: DataSchema):
    """Batch of serialized tf.Examples -> (int32 ids [B, M], float32 labels [B])."""
    names = schema.field_names
    spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in names}
    spec[schema.label] = tf.io.FixedLenFeature([], tf.float32)

    def parse(serialized: tf.Tensor):
        parsed = tf.io.parse_example(serialized, spec)
        ids = tf.cast(tf.stack([parsed[name] for name in names], axis=1), tf.int32)
        return ids, parsed[schema.label]

    return parse


def make_dataset(data_dir: str, schema: DataSchema, split: str, batch_size: int, *,
                 shuffle: bool, repeat: bool, seed: int | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 drop_remainder: bool = False, num_parallel_reads: int | None = None,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """The `(ids, labels)` batches of `split`. With `input_context`, `batch_size` is global and
    this pipeline yields per-replica batches of its share of the records."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shuffle and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1 when shuffling, got {shuffle_buffer}")
    _check_schema(schema)
    files = list_shards(data_dir, split)
    check_records(files, schema)

    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines, pipeline_id = (
            input_context.num_input_pipelines,
            input_context.input_pipeline_id,
        )
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    shard_files = num_pipelines > 1 and len(files) >= num_pipelines
    shard_chunks = num_pipelines > 1 and not shard_files
    if shard_files:
        files = files[pipeline_id::num_pipelines]
    # chunk-level sharding needs the same chunk order in every pipeline
    deterministic = seed is not None or not shuffle or shard_chunks
    cycle = num_parallel_reads or min(len(files), MAX_CYCLE_LENGTH)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and not shard_chunks and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # Elements are chunks of CHUNK_RECORDS consecutive serialized records of one file: the
    # per-element cost of tf.data is paid per chunk, not per record.
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP",
                                          buffer_size=READ_BUFFER_BYTES).batch(CHUNK_RECORDS),
        cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic)
    if shard_chunks:
        ds = ds.shard(num_pipelines, pipeline_id)
    if shuffle:
        # shuffle chunks (a buffer of ~shuffle_buffer records), then records within windows
        ds = ds.shuffle(-(-shuffle_buffer // CHUNK_RECORDS), seed=seed,
                        reshuffle_each_iteration=True)
        window_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((window_seeds, ds.rebatch(max(batch_size, SHUFFLE_WINDOW))))
        ds = ds.map(_permute_window)
    if repeat:
        ds = ds.repeat()
    ds = ds.rebatch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(make_parse_fn(schema), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = deterministic
    options.experimental_optimization.map_parallelization = True
    if input_context is not None:  # sharded here already
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _permute_window(window_seed: tf.Tensor, records: tf.Tensor) -> tf.Tensor:
    """A window of serialized records, permuted. The seeds come from a seeded random stream that
    differs per epoch, so the permutation is reproducible yet new every epoch."""
    return tf.random.experimental.stateless_shuffle(
        records, seed=tf.stack([window_seed, tf.constant(0, tf.int64)]))


def validation_stream(data_dir: str, schema: DataSchema, batch_size: int, *, seed: int | None,
                      split: str = "valid", **kw: Any) -> tf.data.Dataset:
    """The endless shuffled stream of validation batches the architecture updates draw from."""
    return make_dataset(data_dir, schema, split, batch_size, shuffle=True, repeat=True, seed=seed,
                        **kw)


def distributed_dataset(strategy: tf.distribute.Strategy, data_dir: str, schema: DataSchema,
                        split: str, global_batch_size: int, **kw: Any):
    """`make_dataset` per input pipeline of `strategy`; yields per-replica batches of
    global_batch_size / num_replicas."""
    if global_batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    _check_schema(schema)
    list_shards(data_dir, split)  # fail here, with the directory named, not inside the strategy

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(data_dir, schema, split, global_batch_size,
                            input_context=input_context, **kw)

    return strategy.distribute_datasets_from_function(dataset_fn)


def measure_examples_per_second(dataset: tf.data.Dataset, steps: int, warmup: int = 5) -> float:
    """Examples per second the dataset delivers over `steps` batches (after `warmup` batches)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    it = iter(dataset)
    for _ in range(warmup):
        if next(it, None) is None:
            raise ValueError(f"the dataset ended within the {warmup} warm-up batches")
    examples = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it, None)
        if batch is None:
            break
        ids, _ = batch
        examples += int(ids.shape[0])
    elapsed = time.perf_counter() - start
    if examples == 0:
        raise ValueError("the dataset yielded no batches to measure")
    return examples / elapsed
