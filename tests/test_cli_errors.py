"""The command line reports the project's own errors as one line with exit status 2; --debug (or
SBGAN_FAST_DEBUG=1) adds the traceback."""
import pytest

from sbgan_fast.cli import main as cli_main
from sbgan_fast.errors import SbganError, one_line

from tiny import TINY, folder_dataset


def _bad_folder(tmp_path):
    return folder_dataset(tmp_path, high={1: 9}) + ["stages=spade"]


def _one_error_line(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sbgan-fast ") and ": error: " in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err


def test_data_error_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["train", "--out", str(tmp_path / "run"), "--max-steps", "1", *TINY, *_bad_folder(tmp_path)]
    assert cli_main(args) == 2
    _one_error_line(capsys.readouterr().err, "1.png")


def test_unreadable_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    assert cli_main(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "s")]) == 2
    _one_error_line(capsys.readouterr().err, str(bad))
    assert cli_main(["eval", "--checkpoint", str(bad), "--inception-weights", str(bad)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_debug_flag_and_environment_variable_show_the_traceback(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert cli_main(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "s"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("sbgan-fast sample: error:")
    monkeypatch.setenv("SBGAN_FAST_DEBUG", "1")
    assert cli_main(["sample", "--checkpoint", str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_project_errors_share_one_base_class():
    from sbgan_fast.data.datasets import DataError
    from sbgan_fast.metrics.inception import WeightsError
    from sbgan_fast.ops._dispatch import ImplUnavailableError
    from sbgan_fast.train.amp import NonFiniteError
    from sbgan_fast.config import ConfigError
    for cls, builtin in ((DataError, ValueError), (ConfigError, ValueError), (NonFiniteError, RuntimeError),
                         (WeightsError, RuntimeError), (ImplUnavailableError, RuntimeError)):
        assert issubclass(cls, SbganError) and issubclass(cls, builtin), cls


def test_one_line_of_an_error_reraised_by_a_loader_worker():
    from sbgan_fast.data.datasets import DataError
    msg = ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
           '  File "x.py", line 1, in f\n    raise DataError("a")\n'
           "sbgan_fast.data.datasets.DataError: /data/lab/7.png: truncated PNG\n")
    assert one_line(DataError(msg)) == "/data/lab/7.png: truncated PNG"
    assert one_line(ValueError("two\nlines")) == "two lines"


def test_non_positive_sizes_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--out", str(tmp_path / "r"), "--max-steps", "1", "--batch-size", "0", *TINY])
    assert e.value.code == 2
    assert "--batch-size" in capsys.readouterr().err
    for argv in (["sample", "--checkpoint", "x", "--out", "y", "--batch-size", "0"],
                 ["sample", "--checkpoint", "x", "--out", "y", "--n", "-1"],
                 ["eval", "--checkpoint", "x", "--sets", "0"],
                 ["train", "--accum", "0"], ["train", "--max-steps", "-2"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2, argv
        assert argv[-2] in capsys.readouterr().err


def test_non_positive_config_values_are_rejected(tmp_path):
    from sbgan_fast.config import ConfigError
    from tiny import tiny_cfg
    for kv in ("log_every=0", "ckpt_every=-1", "sample_every=-1", "n_sample_grid=0", "seg.batch_size=0"):
        with pytest.raises(ConfigError, match=kv.split("=")[0]):
            tiny_cfg(tmp_path / "r", kv)


def test_an_unwritable_run_folder_is_found_before_the_first_step(tmp_path, capsys):
    from sbgan_fast.errors import RunFolderError
    from sbgan_fast.train.trainer import Trainer
    from tiny import tiny_cfg
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoint folder should be")
    with pytest.raises(RunFolderError, match="checkpoints"):
        Trainer(tiny_cfg(out, "stages=seg", max_steps=1))
    assert not (out / "stats.jsonl").exists() and not (out / "config.json").exists()
    fresh = tmp_path / "fresh"
    Trainer(tiny_cfg(fresh, "stages=seg", max_steps=1)).close()
    assert not (fresh / "checkpoints").exists()     # the check leaves nothing behind
