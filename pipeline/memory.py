"""The search's memory model: what the supernet, the retrained model and the SavedModel's
vocabulary tables need, from the schema's vocabulary sizes and the config, and whether the search
fits the device (`python -m pipeline.search` prints it before it starts and refuses a search that
does not fit; `--dry_run` prints it and exits).

All variables are float32 (4 bytes). Per replica, the search supernet holds:
- the embedding tables: sum_m V_m x W_m, W_m = max(candidates) (`lookup=weight_sharing`) or
  sum(candidates) (`lookup=separate`), V_m the field's vocabulary size (tokens + the OOV row);
- the first-order table (backbones with a linear term): sum_m V_m x 1;
- the embedding optimizer's slots on both tables (`make_embedding_optimizer`): LazyAdam and Adam 2
  (m, v), Adagrad 1, SGD 0 per variable; Adam, unlike LazyAdam, densifies the row-sparse gradient,
  so it also needs DENSE_UPDATE_TEMPORARIES table-sized temporaries during a step;
- alpha ([M, N]) with the architecture optimizer's 2 Adam slots;
- the backbone (MLP, interaction) and unification weights with the dense optimizer's 2 Adam slots,
  and the non-trainable statistics (BatchNorm). These do not depend on the vocabulary: they are
  counted exactly on a copy of the model built with one row per field;
- activations: ACTIVATION_COPIES x the per-replica batch's [B, M, R + 2 d_max] embeddings and MLP
  layers (a few MB at batch 2000).
The total is multiplied by SAFETY_FACTOR for what the model leaves out (gradients of the touched
rows, per-op temporaries, the allocator's rounding and fragmentation). On a GPU, GPU_RUNTIME_RESERVE
more is kept free for the CUDA context and the cuBLAS/cuDNN workspaces. Under MirroredStrategy
every GPU holds a whole replica; K logical CPUs (`--logical_cpus K`) hold K replicas in the same
host memory.

The retrained model holds the same parts (its tables at the chosen dimensions), and one more
table-sized copy, RESTORE_COPY: a restore reads a variable's new value beside the old one
(`pipeline.runtime.restore_in_pieces`: one variable at a time, the largest alone), when a
retraining resumes and when it restores its best weights at the end. At the end the optimizer
slots are released first (`Controller.release_training`) and `model.keras` is written from views
of the variables (`runtime.save_keras_model`, no copy), so nothing else is added there.

The SavedModel's vocabulary tables (TF Serving's memory, not the search's): one StaticHashTable
(token -> id) per field, estimated as 2 x the vocabulary files' bytes + VOCAB_ENTRY_OVERHEAD bytes
per token. Measured (TF 2.21, `tf.saved_model.load` of a SavedModel holding one table built by
`pipeline.serving_module._vocab_table`, RSS growth, 2,000,000 tokens): 8-character tokens (15.9
file bytes per token) 71.9 bytes per token, 32-character tokens (39.9 file bytes) 135.3 bytes per
token; the estimate gives 87.8 and 135.8 (tokens up to 22 bytes live inside the 24-byte tstring,
longer ones on the heap).
"""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
from pathlib import Path
from typing import Sequence

from configs import fileio
from configs.cli import UsageError

FLOAT_BYTES = 4
# Multiplies the whole modelled figure: covers gradients of the touched rows, per-op temporaries,
# the allocator's rounding and fragmentation (the model counts the variables exactly).
SAFETY_FACTOR = 1.25
# GPU only: memory TensorFlow's process needs beside the model (CUDA context, cuBLAS/cuDNN
# workspaces), taken off the GPU's total memory.
GPU_RUNTIME_RESERVE = 1 << 30
# Keras Adam on a row-sparse gradient: the densified gradient and the elementwise temporaries of
# its moment updates, each the size of the table (LazyAdam updates only the touched rows).
DENSE_UPDATE_TEMPORARIES = 3
# Forward activations, their gradients and the gradient w.r.t. the looked-up rows.
ACTIVATION_COPIES = 3
# Slots per variable of each embedding optimizer (`pipeline.trainer.make_embedding_optimizer`).
OPTIMIZER_SLOTS = {"lazy_adam": 2, "adam": 2, "adagrad": 1, "sgd": 0}
DENSE_OPTIMIZER_SLOTS = 2  # the backbone's and alpha's optimizers are Adam
# The retrained model's restores (resume, best weights): the new value of its largest table beside
# the variable (pipeline.runtime.restore_in_pieces restores one variable at a time).
RESTORE_COPY = "restore copy (largest table: resume, best weights)"
# SavedModel vocabulary tables: bytes per token beside 2 x the vocabulary files' bytes (measured,
# see the module docstring).
VOCAB_ENTRY_OVERHEAD = 56

# The parts of an Estimate that grow with the vocabulary (names start so).
ROW_PARTS = ("embedding tables", "first-order table", "embedding optimizer slots",
             "dense Adam update temporaries", "restore copy")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class MemoryLimitError(UsageError):
    """The search would not fit the device memory or --memory_limit (exit code 2)."""


def parse_bytes(text: str, flag: str = "--memory_limit") -> int:
    """'16G', '40GB', '40GiB', '512M', '1.5T', '1000000' -> bytes (K, M, G, T are powers of 1024;
    a B or iB after them is optional). Anything else, zero or a negative is a UsageError naming
    `flag`."""
    match = _SIZE.match(str(text))
    if not match:
        raise UsageError(f"{flag}: cannot parse {text!r} as a size; give bytes or a number with "
                         f"K, M, G or T (powers of 1024), e.g. 16G, 40GB, 512M")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.upper()])
    if value <= 0:
        raise UsageError(f"{flag}: must be more than 0 bytes, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """1234567 -> '1,234,567 B (1.2 MiB)'."""
    n = int(math.ceil(n))
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n:,} B ({n / size:.1f} {unit})"
    return f"{n:,} B"


@dataclasses.dataclass(frozen=True)
class DenseShape:
    """A model's vocabulary-independent variables, in floats: trainable weights outside the
    embedding tables (backbone, unification, first-order bias), non-trainable statistics, and
    alpha (search models)."""

    trainable: int
    non_trainable: int
    arch: int = 0
    first_order: bool = True


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The bytes of one model, by component; `required` = SAFETY_FACTOR x `total`."""

    label: str
    rows: int
    width: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def required(self) -> int:
        return int(math.ceil(self.total * SAFETY_FACTOR))


def table_widths(num_fields: int, candidate_dims: Sequence[int], lookup: str) -> list[int]:
    """Per field, the supernet table's width: max(candidates) or sum(candidates)."""
    if lookup == "weight_sharing":
        width = max(candidate_dims)
    elif lookup == "separate":
        width = sum(candidate_dims)
    else:
        raise ValueError(f"lookup must be weight_sharing or separate, got {lookup!r}")
    return [int(width)] * num_fields


def model_estimate(label: str, vocab_sizes: Sequence[int], widths: Sequence[int],
                   dense: DenseShape, embedding_optimizer: str | None, *,
                   batch_size: int = 0, activation_width: int = 0,
                   restore_copy: bool = False) -> Estimate:
    """The bytes of a model with per-field tables `widths` wide. `embedding_optimizer` None:
    weights only (no optimizer slots, no update temporaries: what inference holds).
    `activation_width`: floats per example of the activations (ACTIVATION_COPIES of them).
    `restore_copy`: one more copy of the largest table variable (RESTORE_COPY; fields of one
    width share one variable, `models._tables`), for the retrained model."""
    if len(vocab_sizes) != len(widths):
        raise ValueError(f"{len(vocab_sizes)} vocab_sizes but {len(widths)} widths")
    table = sum(int(v) * int(w) for v, w in zip(vocab_sizes, widths)) * FLOAT_BYTES
    first = sum(int(v) for v in vocab_sizes) * FLOAT_BYTES if dense.first_order else 0
    parts = {"embedding tables": table}
    if first:
        parts["first-order table"] = first
    if restore_copy:
        groups: dict[int, int] = {}
        for v, w in zip(vocab_sizes, widths):
            groups[int(w)] = groups.get(int(w), 0) + int(v) * int(w) * FLOAT_BYTES
        parts[RESTORE_COPY] = max([*groups.values(), first])
    if embedding_optimizer is not None:
        if embedding_optimizer not in OPTIMIZER_SLOTS:
            raise ValueError(f"unknown embedding optimizer {embedding_optimizer!r}; known: "
                             f"{', '.join(OPTIMIZER_SLOTS)}")
        parts[f"embedding optimizer slots ({embedding_optimizer}: "
              f"{OPTIMIZER_SLOTS[embedding_optimizer]})"] = (
            OPTIMIZER_SLOTS[embedding_optimizer] * (table + first))
        if embedding_optimizer == "adam":
            parts["dense Adam update temporaries"] = DENSE_UPDATE_TEMPORARIES * (table + first)
    slots = DENSE_OPTIMIZER_SLOTS if embedding_optimizer is not None else 0
    if dense.arch:
        parts["alpha" + (" + Adam slots" if slots else "")] = (
            dense.arch * (1 + slots) * FLOAT_BYTES)
    parts["backbone/unification weights" + (" + Adam slots" if slots else "")] = (
        dense.trainable * (1 + slots) * FLOAT_BYTES)
    parts["non-trainable statistics"] = dense.non_trainable * FLOAT_BYTES
    if batch_size and activation_width:
        parts[f"activations (batch {batch_size})"] = (
            ACTIVATION_COPIES * batch_size * activation_width * FLOAT_BYTES)
    uniq = sorted(set(widths))
    width = str(uniq[0]) if len(uniq) == 1 else f"{uniq[0]}..{uniq[-1]}"
    return Estimate(label, int(sum(vocab_sizes)), width, parts)


def search_activation_width(num_fields: int, candidate_dims: Sequence[int], lookup: str,
                            mlp_units: Sequence[int]) -> int:
    """Floats per example of the search step's main activations: the looked-up rows [M, R], the
    mixed embedding [M, d_max] twice (mixing, unification) and the MLP layers (pre/post BN)."""
    raw = table_widths(1, candidate_dims, lookup)[0]
    return num_fields * (raw + 2 * max(candidate_dims)) + 2 * int(sum(mlp_units))


# ------------------------------------------------------------------ vocabulary-independent part
def _dense_shape(model) -> DenseShape:
    import numpy as np

    def count(vs) -> int:
        return int(sum(int(np.prod(v.shape)) for v in vs))

    tables = {id(v) for v in model.embedding_variables}
    arch = {id(v) for v in model.arch_variables}
    trainable = [v for v in model.trainable_variables if id(v) not in tables | arch]
    return DenseShape(trainable=count(trainable),
                      non_trainable=count(model.non_trainable_variables),
                      arch=count(model.arch_variables),
                      first_order=model.first_order is not None)


def measure_search_dense(cfg, num_fields: int, lookup: str | None = None) -> DenseShape:
    """The search supernet's DenseShape, counted on a copy built on the CPU with one row per
    field (nothing of it depends on the vocabulary)."""
    import tensorflow as tf

    from models.factory import build_search_model
    from pipeline.runtime import backbone_kwargs

    m = cfg.model
    with tf.device("/CPU:0"):
        model = build_search_model(m.backbone, [1] * num_fields, candidate_dims=m.candidate_dims,
                                   lookup=lookup or m.lookup, unify=m.unify,
                                   candidate_norm=m.candidate_norm, seed=0, **backbone_kwargs(m))
        model(tf.zeros([2, num_fields], tf.int32), training=False)
    return _dense_shape(model)


def measure_retrain_dense(cfg, num_fields: int, dim: int) -> DenseShape:
    """The DenseShape of the retrained model with every field at `dim`."""
    import tensorflow as tf

    from models.factory import build_retrain_model, effective_mlp_input
    from pipeline.runtime import backbone_kwargs

    m, r = cfg.model, cfg.retrain
    with tf.device("/CPU:0"):
        model = build_retrain_model(m.backbone, [1] * num_fields, [dim] * num_fields,
                                    unify=r.unify, output_dim=dim,
                                    mlp_input=effective_mlp_input(m.backbone, r.mlp_input),
                                    **backbone_kwargs(m))
        model(tf.zeros([2, num_fields], tf.int32), training=False)
    return _dense_shape(model)


# ------------------------------------------------------------------ the report
def vocab_table_bytes(file_bytes: int, tokens: int) -> int:
    """The SavedModel's StaticHashTables: 2 x file bytes + VOCAB_ENTRY_OVERHEAD per token."""
    return 2 * int(file_bytes) + VOCAB_ENTRY_OVERHEAD * int(tokens)


def vocab_files(schema, data_dir: str | Path) -> tuple[int, int, int]:
    """(bytes of the vocabulary files present, their tokens per schema.json, files missing)."""
    total = tokens = missing = 0
    for f in schema.fields:
        if f.vocab_size <= 1:
            continue
        path = fileio.path(data_dir) / f.vocab_file
        if path.is_file():
            total += fileio.size(path)
            tokens += f.vocab_size - 1
        else:
            missing += 1
    return total, tokens, missing


@dataclasses.dataclass
class MemoryReport:
    search: dict[str, Estimate]  # per lookup
    lookup: str  # the one in use
    retrain: list[Estimate]
    vocab: tuple[int, int, int]  # table bytes, tokens, files missing
    candidate_dims: tuple[int, ...] = ()
    vocab_sizes: tuple[int, ...] = ()
    replicas: int = 1  # replicas sharing one device's memory (logical CPUs)
    device: str = "CPU"
    available: int | None = None  # bytes free on one device (None: unknown)
    available_source: str = "unknown"
    limit: int | None = None

    @property
    def need(self) -> int:
        """Bytes the search needs on one device: required x replicas sharing it."""
        return self.search[self.lookup].required * self.replicas

    @property
    def device_budget(self) -> int | None:
        if self.available is None:
            return None
        reserve = GPU_RUNTIME_RESERVE if self.device == "GPU" else 0
        return max(0, self.available - reserve)

    def format(self) -> str:
        est = self.search[self.lookup]
        lines = [f"memory model (float32 bytes per replica; x{SAFETY_FACTOR} safety factor for "
                 f"activations' temporaries, gradients and allocator overhead):",
                 f"  search supernet, lookup={self.lookup}: {est.rows:,} rows x {est.width} "
                 f"columns"]
        lines += [f"    {name:<48} {format_bytes(b)}" for name, b in est.parts.items()]
        lines.append(f"    {'total':<48} {format_bytes(est.total)}")
        lines.append(f"    {'required (x' + str(SAFETY_FACTOR) + ')':<48} "
                     f"{format_bytes(est.required)}")
        for lookup, other in self.search.items():
            if lookup != self.lookup:
                lines.append(f"  search supernet, lookup={lookup} (not in use): {other.rows:,} "
                             f"rows x {other.width} columns, required "
                             f"{format_bytes(other.required)}")
        for r in self.retrain:
            copy = (f", {RESTORE_COPY.split(' (')[0]} {format_bytes(r.parts[RESTORE_COPY])}"
                    if RESTORE_COPY in r.parts else "")
            lines.append(f"  {r.label}: required {format_bytes(r.required)} "
                         f"(tables {format_bytes(r.parts['embedding tables'])}{copy})")
        table, tokens, missing = self.vocab
        gone = f"; {missing} vocabulary file(s) missing" if missing else ""
        lines.append(f"  SavedModel vocabulary tables (serving): {tokens:,} tokens, about "
                     f"{format_bytes(table)}{gone}")
        share = f" x {self.replicas} replicas on one host" if self.replicas > 1 else ""
        lines.append(f"  the search needs {format_bytes(self.need)}{share}")
        if self.available is None:
            lines.append(f"  {self.device} memory: unknown ({self.available_source}); not "
                         f"checked (give --memory_limit)")
        else:
            reserve = (f", {format_bytes(GPU_RUNTIME_RESERVE)} kept for the CUDA runtime"
                       if self.device == "GPU" else "")
            lines.append(f"  {self.device} memory available: {format_bytes(self.available)} "
                         f"({self.available_source}{reserve})")
        if self.limit is not None:
            lines.append(f"  --memory_limit: {format_bytes(self.limit)}")
        return "\n".join(lines)

    def vocab_cap(self, budget: int) -> int | None:
        """The largest per-field vocabulary cap K (tokens; a field keeps min(V, K + 1) rows) with
        which the search's need fits `budget` bytes; None if none does."""
        est = self.search[self.lookup]
        per_row = sum(b for name, b in est.parts.items()
                      if name.startswith(ROW_PARTS)) / max(1, est.rows)
        fixed = est.total - per_row * est.rows
        rows = (budget / self.replicas / SAFETY_FACTOR - fixed) / per_row if per_row else 0
        lo, hi = 0, max(self.vocab_sizes, default=0)
        if sum(min(v, 2) for v in self.vocab_sizes) > rows:
            return None
        while lo < hi:  # the largest K with sum_m min(V_m, K + 1) <= rows
            mid = (lo + hi + 1) // 2
            if sum(min(v, mid + 1) for v in self.vocab_sizes) <= rows:
                lo = mid
            else:
                hi = mid - 1
        return lo or None

    def check(self) -> None:
        """MemoryLimitError if the search does not fit --memory_limit or the device."""
        over = []
        if self.limit is not None and self.need > self.limit:
            over.append(f"--memory_limit {format_bytes(self.limit)}")
        budget = self.device_budget
        if budget is not None and self.need > budget:
            over.append(f"the {self.device} memory available ({format_bytes(budget)}, "
                        f"{self.available_source})")
        if not over:
            return
        est = self.search[self.lookup]
        budgets = [b for b in (self.limit, budget) if b is not None]
        dims = ",".join(str(d) for d in self.candidate_dims)
        advice = [f"lower model.candidate_dims (now {dims})"]
        if self.lookup != "weight_sharing" and "weight_sharing" in self.search:
            shared = self.search["weight_sharing"].required * self.replicas
            advice.append(f"--set model.lookup=weight_sharing (needs {format_bytes(shared)})")
        cap = self.vocab_cap(min(budgets))
        cap_text = (f"dataset.default_max_vocab_size {cap:,} fits" if cap
                    else "no vocabulary cap alone fits")
        advice.append(f"cap the vocabularies ({est.rows:,} rows now; in the preprocessing config "
                      f"a higher default_min_count, or {cap_text})")
        act = sum(b for name, b in est.parts.items() if name.startswith("activations"))
        if act > est.total / 10:
            advice.append(f"a smaller search.batch_size (activations {format_bytes(act)})")
        advice.append("use a device with more memory")
        raise MemoryLimitError(
            f"the search needs {format_bytes(self.need)} (lookup={self.lookup}, "
            f"x{SAFETY_FACTOR} safety included) but that exceeds {' and '.join(over)}; "
            f"{', '.join(advice)}")


def build_report(schema, cfg, data_dir: str | Path, *, limit: int | None = None,
                 replicas: int = 1, device: str = "CPU", available: int | None = None,
                 available_source: str = "unknown",
                 host_replicas: int | None = None) -> MemoryReport:
    """The memory report of a search of `cfg` on `schema` with `replicas` replicas in sync (each
    on its own GPU, or on the host's CPU), `host_replicas` of them on this host (default: all;
    a multi-worker run: this worker's), `available` bytes free on one device. Builds small
    copies of the models to count their vocabulary-independent variables."""
    m, s, r = cfg.model, cfg.search, cfg.retrain
    vocab = [f.vocab_size for f in schema.fields]
    num_fields = len(vocab)
    per_replica_batch = max(1, s.batch_size // max(1, replicas))
    mlp_units = m.mlp_units if m.backbone != "fm" else ()
    search = {}
    for lookup in ("weight_sharing", "separate"):
        dense = measure_search_dense(cfg, num_fields, lookup)
        search[lookup] = model_estimate(
            f"search supernet, lookup={lookup}", vocab,
            table_widths(num_fields, m.candidate_dims, lookup), dense, s.embedding_optimizer,
            batch_size=per_replica_batch,
            activation_width=search_activation_width(num_fields, m.candidate_dims, lookup,
                                                     mlp_units))
    retrain = []
    for dim, what in ((max(m.candidate_dims), "largest candidate, upper bound"),
                      (min(m.candidate_dims), "FDE at the smallest candidate, reference")):
        dense = measure_retrain_dense(cfg, num_fields, dim)
        retrain.append(model_estimate(
            f"retrained model, every field at {dim} ({what})", vocab, [dim] * num_fields, dense,
            r.embedding_optimizer, batch_size=max(1, r.batch_size // max(1, replicas)),
            activation_width=num_fields * 3 * dim + 2 * int(sum(mlp_units)), restore_copy=True))
    file_bytes, tokens, missing = vocab_files(schema, data_dir)
    return MemoryReport(search=search, lookup=m.lookup, retrain=retrain,
                        vocab=(vocab_table_bytes(file_bytes, tokens), tokens, missing),
                        candidate_dims=tuple(m.candidate_dims), vocab_sizes=tuple(vocab),
                        replicas=(host_replicas or replicas) if device == "CPU" else 1,
                        device=device,
                        available=available, available_source=available_source,
                        limit=limit)


# ------------------------------------------------------------------ the device
def meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes (None if unknown)."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def nvidia_smi_total() -> int | None:
    """The smallest total memory among the GPUs this process sees, per nvidia-smi (None if
    unavailable). The total, not the free memory: once this process has started TensorFlow on
    the GPUs (the strategy, an earlier search of `--param_costs`), TensorFlow has reserved
    nearly all of it, and "free" would read as 0. CUDA_VISIBLE_DEVICES entries are matched by
    index or UUID; when one cannot be matched, every GPU counts (the smallest is used). A GPU
    shared with other jobs: pass --memory_limit."""
    import os

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total, by_uuid = {}, {}
    for line in out.strip().splitlines():
        try:
            index, uuid, mib = (x.strip() for x in line.split(","))
            total[index] = by_uuid[uuid] = int(float(mib)) << 20
        except ValueError:
            continue
    visible = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if x.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and visible:
        chosen = [total.get(x, by_uuid.get(x)) for x in visible]
        if all(c is not None for c in chosen):
            return min(chosen)
    return min(total.values()) if total else None


def device_memory(strategy) -> tuple[str, int, int | None, str]:
    """(device kind, replicas in sync, bytes available on one device (for a CPU: the host) or
    None, where that figure comes from). GPUs: nvidia-smi's total memory (nvidia_smi_total), else
    the size in the device name that
    `tf.config.experimental.get_device_details` reports; CPU: MemAvailable of /proc/meminfo."""
    import tensorflow as tf

    replicas = int(getattr(strategy, "num_replicas_in_sync", 1) or 1)
    try:
        devices = list(strategy.extended.worker_devices)
    except (RuntimeError, AttributeError):
        devices = []
    gpus = tf.config.list_physical_devices("GPU")
    on_cpu = not gpus or (devices and all("CPU" in d.upper() for d in devices))
    if on_cpu:
        return "CPU", replicas, meminfo_available(), "/proc/meminfo MemAvailable"
    size = nvidia_smi_total()
    if size is not None:
        return "GPU", replicas, size, "nvidia-smi memory.total, the smallest visible GPU"
    sizes = []
    for gpu in gpus:
        try:
            name = tf.config.experimental.get_device_details(gpu).get("device_name", "")
        except (RuntimeError, ValueError):
            name = ""
        found = re.search(r"(\d+)\s*GB", name, re.IGNORECASE)
        if found:
            sizes.append(int(found.group(1)) << 30)
    if sizes and len(sizes) == len(gpus):
        return "GPU", replicas, min(sizes), "the GPU's name (get_device_details); its total size"
    return "GPU", replicas, None, "no nvidia-smi, and the GPU's name states no size"
