"""benchmarks/scaling.py: the Criteo-shaped table sizes, and the whole benchmark at tiny sizes (all
three parts, their tables and the two ratio lines; the work directory removed, nothing else)."""
import math
import re

import numpy as np
import pytest

from benchmarks import scaling

LAST = re.compile(r"^step_4k_over_2k=(\S+) mem_8k_over_4k=(\S+) beam_8k_over_4k=(\S+)$")
BEFORE_LAST = re.compile(r"^beam_mem_8k_over_4k=(\S+) examples_per_s_8k_over_4k=(\S+)$")


def test_criteo_vocab_sizes_keep_criteo_proportions_and_sum_to_the_rows():
    from preprocessing.synthetic import CRITEO_CARDINALITIES

    sizes = scaling.criteo_vocab_sizes(10_000_000)
    assert len(sizes) == 39 and sum(sizes) == 10_000_000
    assert sizes[:13] == [100] * 13
    shares = np.array(sizes[13:]) / (10_000_000 - 1300)
    expected = np.array(CRITEO_CARDINALITIES) / sum(CRITEO_CARDINALITIES)
    big = expected > 1e-3
    np.testing.assert_allclose(shares[big], expected[big], rtol=1e-3)
    assert sizes[13 + 2] == max(sizes)  # C3
    small = scaling.criteo_vocab_sizes(2000)
    assert sum(small) == 2000 and min(small) >= 2
    with pytest.raises(ValueError, match="cannot hold"):
        scaling.criteo_vocab_sizes(1300)


def _table(out: list[str], title: str) -> list[list[str]]:
    """The rows of the table under the line starting with `title` (until a blank line or a
    line that does not start with a number)."""
    start = next(i for i, line in enumerate(out) if line.startswith(title))
    rows = []
    for line in out[start + 2:]:
        if not re.match(r"^\s+[\d,]+\s", line):
            break
        rows.append(line.split())
    return rows


def test_benchmark_runs_at_tiny_sizes(tmp_path, capsys):
    keep = tmp_path / "not-ours.txt"
    keep.write_text("the benchmark must leave this alone")
    code = scaling.main([
        "--step_rows", "2000,4000", "--train_rows", "4000,8000", "--beam_rows", "4000,8000",
        "--train_steps", "20", "--batch", "128", "--step_calls", "2", "--warmup", "1",
        "--small_repeats", "1", "--workdir", str(tmp_path),
        "--direct_running_mode=in_memory", "--direct_num_workers=1"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    last, before = LAST.match(out[-1]), BEFORE_LAST.match(out[-2])
    assert last and before, out[-2:]
    figures = [float(v) for v in (*last.groups(), *before.groups())]
    assert all(math.isfinite(v) and v > 0 for v in figures), figures

    step = _table(out, "part 1:")
    assert [r[0] for r in step] == ["2,000", "4,000"]
    touched = [float(r[3].replace(",", "")) for r in step]
    assert touched[0] > 100 and abs(touched[1] - touched[0]) < 0.1 * touched[0]
    ms = [float(r[4]) for r in step]
    assert figures[0] == pytest.approx(ms[1] / ms[0], abs=0.02)

    train = _table(out, "part 2:")
    assert [r[0] for r in train] == ["4,000", "8,000"]
    train_rows = [int(r[1].replace(",", "")) for r in train]
    assert 0.7 * 4000 < train_rows[0] < 0.9 * 4000 and 0.7 * 8000 < train_rows[1] < 0.9 * 8000
    peak_mb = [float(r[6].replace(",", "")) for r in train]
    assert min(peak_mb) > 100  # a TensorFlow process tree
    assert figures[1] == pytest.approx(peak_mb[1] / peak_mb[0], abs=0.02)

    beam = _table(out, "part 3:")
    assert [r[0] for r in beam] == ["4,000", "8,000"]
    assert figures[2] == pytest.approx(float(beam[1][5]), abs=0.02)
    assert figures[3] == pytest.approx(float(beam[1][7]), abs=0.02)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-ours.txt"]  # work dir removed
    assert keep.read_text().startswith("the benchmark")


@pytest.mark.parametrize("argv", [["--parts", "step,bogus"], ["--step_rows", "5000"],
                                  ["--train_steps", "25"], ["--beam_rows", "10,20"]])
def test_bad_flags_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        scaling.main(argv)
    assert exc.value.code == 2
