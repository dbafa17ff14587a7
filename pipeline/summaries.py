"""TensorBoard summaries: scalars, the fields x candidates alpha heatmap (labelled, drawn with
matplotlib), the custom-scalars layout of alpha per field, the dims table, the validated
derivation's moves and the HParams sessions of searches and retrainings."""
from __future__ import annotations

import io
import re

import numpy as np
import tensorflow as tf

# Above this many cells the heatmap's cells carry no printed values (they would not be legible).
MAX_ANNOTATED_CELLS = 600
HEATMAP_TAG = "alpha/heatmap_fields_x_candidates"
# The run (a subdirectory of model_dir) that holds a run's HParams session and its final metrics.
HPARAMS_RUN = "hparams"


def heatmap_figure(probs, field_names, candidate_dims, chosen=None):
    """A labelled matplotlib Figure (Agg canvas, no pyplot) of [M, N] alpha probabilities: fields
    as y tick labels, candidate dims as x tick labels, a colourbar, the values in the cells when
    there are at most MAX_ANNOTATED_CELLS, and a frame around each field's `chosen` dim."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    probs = np.clip(np.nan_to_num(np.asarray(probs, np.float64)), 0.0, 1.0)
    m, n = probs.shape
    names = [str(x) for x in field_names]
    dims = [int(d) for d in candidate_dims]
    if len(names) != m or len(dims) != n:
        raise ValueError(f"heatmap: probabilities {probs.shape} for {len(names)} fields and "
                         f"{len(dims)} candidates")
    label_width = 0.09 * max((len(x) for x in names), default=1)
    # 0.28 inch a field, at most 80 inches (8000 pixels) high: beyond ~280 fields rows shrink
    fig = Figure(figsize=(1.8 + label_width + 0.65 * n, 1.3 + min(0.28 * m, 80.0)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    ax.set_xticks(range(n), [f"d={d}" for d in dims])
    ax.set_yticks(range(m), names)
    ax.tick_params(labelsize=8)
    ax.tick_params(axis="y", labelsize=min(8.0, max(2.0, 8.0 * 280 / max(m, 1))))
    ax.set_xlabel("candidate dimension")
    ax.set_ylabel("field")
    ax.set_title("alpha probabilities" + ("" if chosen is None else " (framed: chosen dim)"),
                 fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03)
    if m * n <= MAX_ANNOTATED_CELLS:
        for i in range(m):
            for j in range(n):
                ax.text(j, i, f"{probs[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if probs[i, j] > 0.6 else "white")
    if chosen is not None:
        for i, d in enumerate(chosen):
            if int(d) in dims:
                ax.add_patch(Rectangle((dims.index(int(d)) - 0.5, i - 0.5), 1, 1, fill=False,
                                       edgecolor="red", linewidth=1.5))
    fig.tight_layout()
    return fig


def heatmap_png(probs, field_names, candidate_dims, chosen=None) -> bytes:
    """The labelled heatmap (heatmap_figure) as PNG bytes."""
    buf = io.BytesIO()
    heatmap_figure(probs, field_names, candidate_dims, chosen).savefig(buf, format="png")
    return buf.getvalue()


def heatmap_image(probs, field_names, candidate_dims, chosen=None) -> tf.Tensor:
    """The labelled heatmap as a [1, H, W, 3] uint8 image for tf.summary.image."""
    png = heatmap_png(probs, field_names, candidate_dims, chosen)
    return tf.io.decode_png(png, channels=3)[None]


def alpha_layout(field_names, candidate_dims=None):
    """The custom-scalars layout: one chart per field whose series are its candidates'
    `alpha/<field>/d<D>` scalars."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    dims = (r"\d+" if candidate_dims is None
            else "(" + "|".join(str(int(d)) for d in candidate_dims) + ")")
    charts = [layout_pb2.Chart(title=str(name), multiline=layout_pb2.MultilineChartContent(
        tag=[rf"^alpha/{re.escape(str(name))}/d{dims}$"])) for name in field_names]
    return layout_pb2.Layout(category=[layout_pb2.Category(title="alpha per field",
                                                           chart=charts)])


def write_alpha_layout(writer, field_names, candidate_dims=None) -> None:
    """Writes alpha_layout once (the custom scalars dashboard reads a run's first layout)."""
    from tensorboard.plugins.custom_scalar import metadata

    layout = alpha_layout(field_names, candidate_dims)
    with writer.as_default():
        tf.summary.write(tag=metadata.CONFIG_SUMMARY_TAG,
                         tensor=tf.constant(layout.SerializeToString(), dtype=tf.string), step=0,
                         metadata=metadata.create_summary_metadata().SerializeToString())
    writer.flush()


def write_hparams(writer, hparams: dict, trial_id: str | None = None) -> None:
    """Starts an HParams session in `writer`'s run (write its metrics with write_scalars)."""
    from tensorboard.plugins.hparams import api as hp

    with writer.as_default():
        hp.hparams({k: v for k, v in hparams.items() if v is not None}, trial_id=trial_id)
    writer.flush()


def dims_table(field_names, candidate_dims, probs, chosen) -> str:
    """A markdown table of per-field probabilities and the chosen dimension."""
    header = "| field | " + " | ".join(f"d={d}" for d in candidate_dims) + " | chosen |"
    sep = "|---" * (len(candidate_dims) + 2) + "|"
    rows = [header, sep]
    for name, p, d in zip(field_names, probs, chosen):
        rows.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in p) + f" | {d} |")
    return "\n".join(rows)


def write_alpha(writer, step: int, field_names, candidate_dims, probs, chosen) -> None:
    """Per-field alpha probabilities as scalars, the labelled heatmap image and the dims table
    (write_alpha_layout, once per run, groups the scalars by field)."""
    with writer.as_default(step=step):
        for name, row in zip(field_names, probs):
            for d, p in zip(candidate_dims, row):
                tf.summary.scalar(f"alpha/{name}/d{d}", float(p))
        tf.summary.image(HEATMAP_TAG, heatmap_image(probs, field_names, candidate_dims, chosen))
        tf.summary.text("dims/table", dims_table(field_names, candidate_dims, probs, chosen))


def write_scalars(writer, step: int, values: dict) -> None:
    with writer.as_default(step=step):
        for key, value in values.items():
            tf.summary.scalar(key, float(value))
    writer.flush()


def derivation_table(record: dict) -> str:
    """A markdown table of a validated derivation's accepted moves."""
    rows = ["| field | from | to | mean loss diff | s.e. | sweep |", "|---|---|---|---|---|---|"]
    for mv in record["moves"]:
        se = "n/a" if mv["se"] is None else f"{mv['se']:.6f}"
        rows.append(f"| {mv['field']} | {mv['from']} | {mv['to']} | {mv['mean_diff']:+.6f} | "
                    f"{se} | {mv['sweep']} |")
    if not record["moves"]:
        rows.append("| (none: the argmax dimensions stand) | | | | | |")
    return "\n".join(rows)


def write_derivation(writer, step: int, record: dict) -> None:
    """A validated derivation (pipeline.derive): its one-hot validation losses, move count and the
    table of moves."""
    with writer.as_default(step=step):
        tf.summary.scalar("derive/valid_logloss_argmax", float(record["argmax_valid_logloss"]))
        tf.summary.scalar("derive/valid_logloss_validated", float(record["valid_logloss"]))
        tf.summary.scalar("derive/moves", float(len(record["moves"])))
        tf.summary.text("dims/derivation", derivation_table(record))
    writer.flush()
