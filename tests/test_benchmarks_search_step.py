"""Smoke test of benchmarks/search_step.py on a tiny configuration, and its synthetic data."""
import math
import re

import numpy as np
import pytest

from benchmarks import search_step

LAST_LINE = re.compile(r"^ad2_over_fde=(\S+) input_over_train=(\S+) fde_examples_per_s=(\S+) "
                       r"preset_over_fde=(\S+)$")


def test_ladder_vocab_sizes_span_the_generator_ladder():
    sizes = search_step.ladder_vocab_sizes(39)
    assert len(sizes) == 39
    assert sizes[0] == 3 and sizes[-1] == 100_001  # 2 and 100,000 values, plus the OOV id
    assert sizes == sorted(sizes)
    # the synthetic generator's 26 rungs are the same ladder
    from preprocessing.synthetic import ladder
    assert [s - 1 for s in search_step.ladder_vocab_sizes(26)] == [ladder(i) for i in range(26)]
    with pytest.raises(ValueError, match="--fields"):
        search_step.ladder_vocab_sizes(0)


def test_write_synthetic_is_read_back_by_the_input_pipeline(tmp_path):
    from configs.features import DataSchema
    from pipeline.input import make_dataset

    vocab = [3, 50, 1001]
    schema = search_step.write_synthetic(tmp_path, 400, vocab, seed=3)
    assert DataSchema.load(tmp_path).splits == {"train": 400, "valid": 50, "test": 50}
    ids, labels = [], []
    for x, y in make_dataset(str(tmp_path), schema, "train", 128, shuffle=False, repeat=False):
        ids.append(x.numpy())
        labels.append(y.numpy())
    ids, labels = np.concatenate(ids), np.concatenate(labels)
    assert ids.shape == (400, 3) and labels.shape == (400,)
    for col, v in enumerate(vocab):
        assert ids[:, col].min() >= 1 and ids[:, col].max() <= v - 1  # no OOV, within vocab
    # Zipf: id 1 is the most frequent value of the large field
    counts = np.bincount(ids[:, 2], minlength=vocab[2])
    assert counts.argmax() == 1
    assert set(np.unique(labels)) <= {0.0, 1.0} and 0 < labels.mean() < 1


def test_benchmark_runs_and_last_line_parses(tmp_path, capsys):
    code = search_step.main(["--rows", "1200", "--fields", "4", "--batch", "100", "--steps", "10",
                             "--warmup", "1", "--input-batches", "3", "--no-stats-cost",
                             "--data_root", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.match(out[-1])
    assert match, out[-1]
    ad2, input_over_train, fde_rate, preset = (float(g) for g in match.groups())
    assert all(math.isfinite(v) and v > 0 for v in (ad2, input_over_train, fde_rate, preset))
    rows = {line.split()[0]: line.split() for line in out
            if re.match(r"^(FDE|AD-\d|preset)\s", line)}
    assert sorted(rows) == ["AD-1", "AD-2", "AD-3", "AD-4", "FDE", "preset"]
    assert rows["preset"][1:3] == ["weight_sharing", "zero_pad"]
    assert preset == pytest.approx(
        float(rows["preset"][3]) / float(rows["FDE"][3]), rel=0.05, abs=0.01
    )
    assert rows["AD-2"][1:3] == ["weight_sharing", "linear"]
    assert rows["AD-3"][1:3] == ["separate", "zero_pad"]
    assert rows["FDE"][1:3] == ["fixed-32", "zero_pad"]
    fde_ms, ad2_ms = float(rows["FDE"][3]), float(rows["AD-2"][3])
    # the last line agrees with the table (ms/step printed to 0.1 ms)
    assert ad2 == pytest.approx(ad2_ms / fde_ms, rel=0.05, abs=0.01)
    assert fde_rate == pytest.approx(100 / (fde_ms / 1e3), rel=0.05)
    assert any("MovieLens-100k: skipped" in line for line in out)
