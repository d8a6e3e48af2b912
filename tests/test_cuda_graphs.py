"""The ``seg.cuda_graphs_max_res`` setting (CUDA graphs for G_seg and D_seg at the seg stage's low resolutions).

On the CPU: the setting is off by default and validated; without compile or without a CUDA device it logs one line
and trains exactly as the plain path; and, with a stand-in for the CUDA-graph compiler (``aot_eager`` that records
the label-map heights it runs at), the graphed resolutions' steps take the graphs entry, the others the plain
compiled one, each graphed step is marked as a new CUDA-graph step, and the results equal the plain compiled run.
On a CUDA device (``gpu``): seg steps with CUDA graphs equal the same compiled steps without them, and the graphs
were recorded.
"""
import json

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from sbgan_fast.config import build_config
from sbgan_fast.config.schema import ConfigError
from sbgan_fast.models.build import build_networks
from sbgan_fast.train import compiled
from sbgan_fast.train.trainer import train

from tiny import tiny_cfg
from tolerances import FP32_REORDERED

K = 11   # label channels of the tiny synthetic data
# tiny seg schedule: heights 4, 8, 16 (aspect ratio 1), 2 steps per phase; 3 steps = two at 4, one at 8
SEG = ["stages=seg", "sample_every=0", "log_every=1"]


def _records(out):
    return [json.loads(line) for line in open(out / "stats.jsonl")]


def _assert_same_training(ta, out_a, tb, out_b, exact):
    ra, rb = _records(out_a), _records(out_b)
    assert len(ra) == len(rb) and ra
    for a, b in zip(ra, rb):
        for k, v in a.items():
            if k.startswith(("loss", "wdist", "gp", "score")) and isinstance(v, float):
                assert b[k] == (v if exact else pytest.approx(v, rel=1e-5, abs=1e-6)), (k, a, b)
    for name in ("G_seg", "D_seg"):
        sa, sb = ta.nets[name].state_dict(), tb.nets[name].state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            if exact:
                assert torch.equal(sa[k], sb[k]), f"{name}.{k}"
            else:
                torch.testing.assert_close(sb[k], sa[k], **FP32_REORDERED, msg=lambda m: f"{name}.{k}: {m}")


def test_setting_is_off_by_default_and_validated(tmp_path):
    assert tiny_cfg(tmp_path).seg.cuda_graphs_max_res == 0
    assert tiny_cfg(tmp_path, "seg.cuda_graphs_max_res=8").seg.cuda_graphs_max_res == 8
    for bad in ("6", "2", "-4", "yes"):
        with pytest.raises(ConfigError, match="seg.cuda_graphs_max_res"):
            build_config("demo", None, [f"seg.cuda_graphs_max_res={bad}"])


def test_graphs_need_compiled_networks(tmp_path):
    nets = build_networks(tiny_cfg(tmp_path), K, names=("G_seg", "D_seg"))
    with pytest.raises(RuntimeError, match="CUDA graphs for G_seg: the network is not compiled"):
        compiled.SegGraphs(nets, 4)


def test_unavailable_reasons():
    assert "compile=true" in compiled.cuda_graphs_unavailable(False, torch.device("cpu"))
    assert "compile=true" in compiled.cuda_graphs_unavailable(False, torch.device("cuda"))
    assert "CUDA device" in compiled.cuda_graphs_unavailable(True, torch.device("cpu"))


def test_without_compile_one_line_and_the_plain_training(tmp_path, capsys):
    plain = train(tiny_cfg(tmp_path / "p", *SEG, max_steps=3))
    capsys.readouterr()
    graphs = train(tiny_cfg(tmp_path / "g", *SEG, "seg.cuda_graphs_max_res=8", max_steps=3))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "cuda_graphs_max_res" in ln]
    assert len(lines) == 1 and "compile=true" in lines[0], lines
    _assert_same_training(plain, tmp_path / "p", graphs, tmp_path / "g", exact=True)


class Recording:
    """A torch.compile backend (``aot_eager`` inside) that records, for each call of each graph it compiled, the
    largest height of the K-channel label maps among the call's inputs and outputs."""

    def __init__(self):
        self.inner, self.heights, self.graphs = lookup_backend("aot_eager"), [], 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        fn = self.inner(gm, example_inputs)

        def run(*args):
            out = fn(*args)
            ts = list(args) + (list(out) if isinstance(out, (list, tuple)) else [out])
            hs = [t.shape[2] for t in ts if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] == K
                  and t.shape[2] >= 4]
            self.heights.append(max(hs, default=None))
            return out
        return run


@pytest.fixture
def fresh_dynamo(monkeypatch):
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.slow   # compiles G_seg and D_seg (aot_eager) at two resolutions, twice
def test_graphed_steps_take_the_graphs_entry_with_the_same_results(tmp_path, monkeypatch, capsys, fresh_dynamo):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    ref = train(tiny_cfg(tmp_path / "p", *SEG, "compile=true", max_steps=3))
    torch._dynamo.reset()
    plain, graphs, marks = Recording(), Recording(), []
    monkeypatch.setattr(compiled, "BACKEND", plain)
    monkeypatch.setattr(compiled, "GRAPH_COMPILE", {"backend": graphs})
    monkeypatch.setattr(compiled, "cuda_graphs_unavailable", lambda compile_on, device: None)   # as on a GPU
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    capsys.readouterr()
    t = train(tiny_cfg(tmp_path / "g", *SEG, "compile=true", "seg.cuda_graphs_max_res=4", max_steps=3))
    assert "cuda_graphs_max_res" not in capsys.readouterr().err
    # the two steps at height 4 ran G_seg and D_seg through the graphs entry only, the step at 8 the plain one
    assert graphs.graphs > 0 and graphs.heights and set(graphs.heights) == {4}, graphs.heights
    assert plain.heights and set(plain.heights) == {8}, plain.heights
    assert len(marks) == 2
    _assert_same_training(ref, tmp_path / "p", t, tmp_path / "g", exact=False)


@pytest.mark.slow
def test_compiled_on_cpu_one_line_and_the_compiled_training(tmp_path, monkeypatch, capsys, fresh_dynamo):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    ref = train(tiny_cfg(tmp_path / "p", *SEG, "compile=true", max_steps=3))
    torch._dynamo.reset()
    capsys.readouterr()
    t = train(tiny_cfg(tmp_path / "g", *SEG, "compile=true", "seg.cuda_graphs_max_res=8", max_steps=3))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "cuda_graphs_max_res" in ln]
    assert len(lines) == 1 and "CUDA device" in lines[0], lines
    _assert_same_training(ref, tmp_path / "p", t, tmp_path / "g", exact=False)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seg_steps_with_cuda_graphs_equal_without_on_cuda(tmp_path, fresh_dynamo):
    """Inductor on CUDA, fp32: 4 steps at 4x4 (warm-up, record, two replays) and 2 at 8x8, all graphed, against the
    same compiled steps without CUDA graphs; the graphs were recorded and none was skipped."""
    steps = ["seg.epochs_per_phase=0.5", "device=cuda", "compile=true", "precision=fp32"]   # 4 steps per phase
    ref = train(tiny_cfg(tmp_path / "p", *SEG, *steps, max_steps=6))
    torch._dynamo.reset()
    counters.clear()
    t = train(tiny_cfg(tmp_path / "g", *SEG, *steps, "seg.cuda_graphs_max_res=8", max_steps=6))
    assert counters["inductor"]["cudagraph_skips"] == 0
    from torch._inductor import cudagraph_trees
    mgr = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    assert mgr is not None and len(mgr.roots) > 0, "no CUDA graph was recorded"
    _assert_same_training(ref, tmp_path / "p", t, tmp_path / "g", exact=False)
