"""The markdown a benchmark writes (benchmarks.check_output / write_output): an existing --output
is replaced only when that benchmark wrote it, checked before anything runs; a user's file (a
README, the curated BENCHMARKS.md) is refused and left as it was."""
import pytest

from benchmarks import ablation, budget, quality, transfer

BENCHES = {"quality": (quality, quality.TITLE), "budget": (budget, budget.TITLE),
           "transfer": (transfer, transfer.TITLE), "ablation": (ablation, ablation.TITLE)}


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_a_foreign_output_is_refused_and_kept(name, tmp_path, capsys):
    module, title = BENCHES[name]
    foreign = tmp_path / "BENCHMARKS.md"
    foreign.write_text("# Benchmarks\n\ncurated figures\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        module.main(["--data_root", str(tmp_path / "absent"), "--workdir", str(tmp_path / "w"),
                     "--output", str(foreign)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--output {foreign} exists and was not written by this benchmark" in err
    assert repr(title) in err
    assert foreign.read_text(encoding="utf-8") == "# Benchmarks\n\ncurated figures\n"
    assert not (tmp_path / "w").exists()
    # its own earlier output is accepted (the run then skips: no data root)
    own = tmp_path / "own.md"
    own.write_text(f"{title} (earlier)\n\n| table |\n", encoding="utf-8")
    if name != "ablation":  # ablation reads --data_dir or a dataset; its check is the same call
        assert module.main(["--data_root", str(tmp_path / "absent"),
                            "--workdir", str(tmp_path / "w"), "--output", str(own)]) == 0
        assert own.read_text(encoding="utf-8").startswith(title)


def test_write_output_is_atomic_and_quality_writes_into_its_workdir(tmp_path, monkeypatch, capsys):
    from benchmarks import write_output

    out = tmp_path / "sub" / "table.md"
    write_output(out, ["## T", "", "| a |"])
    assert out.read_text(encoding="utf-8") == "## T\n\n| a |"
    assert [p.name for p in out.parent.iterdir()] == ["table.md"]  # no temporary left
    # quality's default --output is WORKDIR/quality.md (it was the repository's BENCHMARKS.md)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("curated\n", encoding="utf-8")
    work = tmp_path / "runs"
    work.mkdir()
    (work / "quality.md").write_text("somebody's notes\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        quality.main(["--data_root", str(tmp_path / "absent"), "--workdir", str(work)])
    assert f"--output {work / 'quality.md'} exists" in capsys.readouterr().err
    assert (tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8") == "curated\n"
