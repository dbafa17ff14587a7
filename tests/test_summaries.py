"""TensorBoard summaries read back from the event files: the labelled alpha heatmap, the custom
scalars layout of alpha per field, HParams sessions (the end-to-end sessions of a search and a
retraining are checked in test_search.py and test_retrain.py with `read_events`)."""
import re
from pathlib import Path

import numpy as np
import pytest

CANDS = [2, 8, 16, 24, 32]


def read_events(directory) -> list:
    """Every summary value of the event files directly in `directory`, as (step, value) pairs."""
    import tensorflow as tf

    out = []
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            out.extend((event.step, v) for v in event.summary.value)
    return out


def scalar_series(directory, tag: str) -> list[tuple[int, float]]:
    """[(step, value)] of a tf.summary.scalar tag, in the order written."""
    import tensorflow as tf

    return [(step, float(tf.make_ndarray(v.tensor))) for step, v in read_events(directory)
            if v.tag == tag]


def hparams_session(directory) -> dict:
    """The hparams of the HParams session started in `directory` ({name: python value})."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    starts = [v for _, v in read_events(directory) if v.tag == metadata.SESSION_START_INFO_TAG]
    assert starts, f"no HParams session in {directory}"
    data = plugin_data_pb2.HParamsPluginData.FromString(starts[-1].metadata.plugin_data.content)
    out = {}
    for name, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[name] = getattr(value, kind)
    return out


def summary_images(directory, tag: str) -> list[np.ndarray]:
    """The decoded PNGs of a tf.summary.image tag ([H, W, C] uint8 each)."""
    import tensorflow as tf

    images = []
    for _, v in read_events(directory):
        if v.tag == tag:
            blobs = tf.make_ndarray(v.tensor)  # [width, height, png, ...]
            images.extend(tf.io.decode_png(b).numpy() for b in blobs[2:])
    return images


def _probs(m, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(len(CANDS)), m).astype(np.float32)


def test_heatmap_figure_is_labelled_with_fields_candidates_values_and_a_colourbar():
    from pipeline import summaries

    names = ["I1", "C1", "C14", "site_category"]
    probs = _probs(len(names))
    chosen = [CANDS[int(i)] for i in probs.argmax(1)]
    fig = summaries.heatmap_figure(probs, names, CANDS, chosen)
    heat, *others = fig.axes
    assert len(others) == 1  # the colourbar
    assert [t.get_text() for t in heat.get_yticklabels()] == names
    assert [t.get_text() for t in heat.get_xticklabels()] == [f"d={d}" for d in CANDS]
    cells = [t.get_text() for t in heat.texts]
    assert cells == [f"{p:.2f}" for p in probs.ravel()]
    assert len(heat.patches) == len(names)  # a frame on each field's chosen dim
    # too many cells for legible numbers: none printed, the labels stay
    many = [f"f{i}" for i in range(200)]
    big = summaries.heatmap_figure(_probs(200), many, CANDS)
    assert len(big.axes[0].texts) == 0
    assert [t.get_text() for t in big.axes[0].get_yticklabels()] == many
    with pytest.raises(ValueError, match="fields"):
        summaries.heatmap_figure(probs, names[:2], CANDS)


def test_heatmap_image_summary_grows_with_the_fields_and_is_not_blank(tmp_path):
    import tensorflow as tf

    from pipeline import summaries

    sizes = {}
    for m in (3, 12):
        names = [f"F{i}" for i in range(m)]
        probs = _probs(m, seed=m)
        writer = tf.summary.create_file_writer(str(tmp_path / str(m)))
        summaries.write_alpha(
            writer, 5, names, CANDS, probs, [CANDS[int(i)] for i in probs.argmax(1)]
        )
        writer.flush()
        (img,) = summary_images(tmp_path / str(m), summaries.HEATMAP_TAG)
        assert img.dtype == np.uint8 and img.shape[2] in (3, 4)
        rgb = img[..., :3].astype(np.float32)
        assert rgb.std() > 20  # not a blank canvas
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # a colour map, text, a colourbar
        sizes[m] = img.shape[:2]
        # the per-field scalars are still there, one per field and candidate
        tags = {v.tag for _, v in read_events(tmp_path / str(m))}
        assert {f"alpha/{n}/d{d}" for n in names for d in CANDS} <= tags
    assert sizes[12][0] > sizes[3][0] + 9 * 20  # about 28 pixels a field


def test_alpha_layout_has_one_chart_per_field_over_its_candidates(tmp_path):
    import tensorflow as tf
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    from pipeline import summaries

    names = ["C1", "C11", "site-id"]
    writer = tf.summary.create_file_writer(str(tmp_path))
    summaries.write_alpha_layout(writer, names, CANDS)
    layouts = [v for _, v in read_events(tmp_path) if v.tag == metadata.CONFIG_SUMMARY_TAG]
    assert len(layouts) == 1
    assert layouts[0].metadata.plugin_data.plugin_name == metadata.PLUGIN_NAME
    layout = layout_pb2.Layout.FromString(tf.make_ndarray(layouts[0].tensor).item())
    (category,) = layout.category
    assert [c.title for c in category.chart] == names
    every_tag = [f"alpha/{n}/d{d}" for n in names for d in CANDS] + ["alpha/C1/d4", "loss"]
    for name, chart in zip(names, category.chart):
        (regex,) = chart.multiline.tag
        matched = [t for t in every_tag if re.search(regex, t)]
        # its own candidates only: not C11's series in C1's chart, not a dim it does not have
        assert matched == [f"alpha/{name}/d{d}" for d in CANDS]
