"""TensorBoard summaries: scalars, the fields x candidates alpha heatmap, the dims table and the
validated derivation's moves."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

# A perceptually ordered colour ramp (viridis key colours) for the heatmap; no matplotlib needed.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                 dtype=np.float32)


def heatmap_image(probs: np.ndarray, cell_h: int = 10, cell_w: int = 24) -> np.ndarray:
    """[M, N] probabilities in [0, 1] -> a [1, M*cell_h, N*cell_w, 3] uint8 image (row = field)."""
    probs = np.clip(np.nan_to_num(np.asarray(probs, np.float32)), 0.0, 1.0)
    pos = probs * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    img = np.repeat(np.repeat(rgb, cell_h, axis=0), cell_w, axis=1)
    img[::cell_h, :, :] = 255 * 0.15  # thin row separators
    return img[None].astype(np.uint8)


def dims_table(field_names, candidate_dims, probs, chosen) -> str:
    """A markdown table of per-field probabilities and the chosen dimension."""
    header = "| field | " + " | ".join(f"d={d}" for d in candidate_dims) + " | chosen |"
    sep = "|---" * (len(candidate_dims) + 2) + "|"
    rows = [header, sep]
    for name, p, d in zip(field_names, probs, chosen):
        rows.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in p) + f" | {d} |")
    return "\n".join(rows)


def write_alpha(writer, step: int, field_names, candidate_dims, probs, chosen) -> None:
    """Per-field alpha probabilities as scalars, the heatmap image and the dims table."""
    with writer.as_default(step=step):
        for name, row in zip(field_names, probs):
            for d, p in zip(candidate_dims, row):
                tf.summary.scalar(f"alpha/{name}/d{d}", float(p))
        tf.summary.image("alpha/heatmap_fields_x_candidates", heatmap_image(probs))
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
