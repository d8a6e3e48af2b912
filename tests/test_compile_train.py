"""The ``compile`` setting: each network compiled equals eager (outputs and every parameter and input gradient) with
no graph break, a compiled training step gives the eager step's losses, checkpoints written compiled load with it
off (same keys), and the seg stage builds one graph per resolution and mode.

Backend: ``aot_eager`` (dynamo capture + AOT autograd's forward and backward graphs, run by eager kernels): it
checks the capture, the graph breaks and the autograd split within the CI budget. Inductor's CPU code generation
takes ~50 s for tiny G_seg alone on two cores; it is what ``compile=true`` uses in training and is measured by the
benchmarks, not here.
"""
import copy
import json

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from sbgan_fast.models.build import build_networks
from sbgan_fast.models.checkpoint import load_checkpoint
from sbgan_fast.models.vgg import VGG19Features
from sbgan_fast.train import compiled
from sbgan_fast.train.trainer import Trainer, train

from tiny import tiny_cfg
from tolerances import FP32_GRAD, FP32_REORDERED

pytestmark = pytest.mark.slow   # compiles networks (tens of seconds on a 2-core CPU)

BACKEND = "aot_eager"
K = 11   # label channels of the tiny synthetic data


@pytest.fixture(autouse=True)
def _fresh_dynamo(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", BACKEND)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class Counting:
    """A torch.compile backend that counts the graphs it is given, then runs ``inner``."""

    def __init__(self, inner=BACKEND):
        self.inner, self.graphs = lookup_backend(inner), 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _inputs(name, cfg):
    g = torch.Generator().manual_seed(1)
    if name == "G_seg":
        return (torch.randn(2, cfg.seg.z_dim, generator=g),), {"res": 8, "alpha": 0.5}
    if name == "D_seg":
        return (torch.rand(2, K, 8, 8, generator=g).softmax(1),), {"alpha": 0.5}
    if name == "G_spd":
        return (torch.randint(0, K, (2, 32, 32), generator=g),), {}
    if name == "D_spd":
        return (torch.randn(4, K + 3, 32, 32, generator=g),), {}
    if name == "D2":
        return (torch.randn(2, 3, 32, 32, generator=g),), {}
    return (torch.randn(2, 3, 32, 32, generator=g),), {}     # VGG19 features


@pytest.mark.parametrize("name", ["G_seg", "D_seg", "G_spd", "D_spd", "D2", "vgg"])
def test_compiled_network_equals_eager(tmp_path, name):
    torch.manual_seed(0)
    if name == "vgg":
        eager_net = VGG19Features()
    else:
        eager_net = build_networks(tiny_cfg(tmp_path), K, names=(name,))[name]
    eager_net.train()
    net = copy.deepcopy(eager_net)
    counter = Counting()
    net.compile(backend=counter, fullgraph=True)        # fullgraph: any graph break fails
    args, kwargs = _inputs(name, tiny_cfg(tmp_path))
    outs, grads = [], []
    for m in (eager_net, net):
        a = [x.clone().requires_grad_(x.is_floating_point()) for x in args]
        out = _flat(m(*a, **kwargs))
        w = [torch.randn(o.shape, generator=torch.Generator().manual_seed(2)) for o in out]
        loss = sum((o * wi).sum() for o, wi in zip(out, w))
        params = [p for p in m.parameters() if p.requires_grad]
        diff = [x for x in a if x.requires_grad]
        grads.append(torch.autograd.grad(loss, params + diff, allow_unused=True))
        outs.append(out)
    assert counter.graphs == 1 and not counters["graph_break"], dict(counters["graph_break"])
    for k, (o_e, o_c) in enumerate(zip(*outs)):
        torch.testing.assert_close(o_c, o_e, **FP32_REORDERED, msg=lambda m: f"{name} output {k}: {m}")
    for k, (g_e, g_c) in enumerate(zip(*grads)):
        assert (g_e is None) == (g_c is None), f"{name} gradient {k} missing in one mode"
        if g_e is not None:
            torch.testing.assert_close(g_c, g_e, **FP32_GRAD, msg=lambda m: f"{name} gradient {k}: {m}")
    # buffers (batch-norm statistics, spectral-norm vectors) moved the same way
    for (k, b_e), (_, b_c) in zip(eager_net.state_dict().items(), net.state_dict().items()):
        torch.testing.assert_close(b_c, b_e, **FP32_REORDERED, msg=lambda m: f"{name}.{k}: {m}")


def _losses(out, stage, compile_on, steps=2):
    t = train(tiny_cfg(out, f"stages={stage}", f"compile={str(compile_on).lower()}", max_steps=steps))
    recs = [json.loads(line) for line in open(out / "stats.jsonl")]
    return t, recs


@pytest.mark.parametrize("stage", ["seg", "spade"])
def test_compiled_training_equals_eager_and_checkpoints_load_without_compile(tmp_path, stage):
    te, rec_e = _losses(tmp_path / "e", stage, False)
    tc, rec_c = _losses(tmp_path / "c", stage, True)
    assert counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(rec_e) == len(rec_c) and rec_e
    for r_e, r_c in zip(rec_e, rec_c):
        for k, v in r_e.items():
            if k.startswith(("loss", "G_", "D_", "wdist", "gp", "score")) and isinstance(v, float):
                assert r_c[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, r_e, r_c)
    names = ("G_seg", "D_seg") if stage == "seg" else ("G_spd", "D_spd")
    for name in names:
        sd_e, sd_c = te.nets[name].state_dict(), tc.nets[name].state_dict()
        assert list(sd_c) == list(sd_e), f"{name}: compiled checkpoint keys differ"
        for k in sd_e:
            torch.testing.assert_close(sd_c[k], sd_e[k], **FP32_REORDERED, msg=lambda m: f"{name}.{k}: {m}")
    # the compiled run's checkpoint: the plain keys, loads strictly into uncompiled networks, resumes compile off
    ck = load_checkpoint(str(tmp_path / "c" / "checkpoints" / f"{stage}-latest.pt"))
    fresh = build_networks(tiny_cfg(tmp_path / "x"), K, names=names)
    for name in names:
        assert not any("_orig_mod" in k for k in ck["nets"][name])
        fresh[name].load_state_dict(ck["nets"][name], strict=True)
    train(tiny_cfg(tmp_path / "c", f"stages={stage}", "compile=false", max_steps=3), resume=True)
    recs = [json.loads(line) for line in open(tmp_path / "c" / "stats.jsonl")]
    assert len(recs) > len(rec_c), "the resumed run logged no step"


def test_seg_graphs_per_resolution(tmp_path):
    """The seg stage at compile=true: G_seg and D_seg specialize on the resolution (an int), on whether their
    input requires gradients and on grad mode, not on the fade-in alpha (a float): the number of graphs
    is bounded by resolutions x modes and stated here."""
    cfg = tiny_cfg(tmp_path / "r", "stages=seg", "compile=true", "sample_every=0")
    t = Trainer(cfg)
    t.run()
    n_res = len(t.nets["G_seg"].resolutions)
    graphs = counters["stats"]["unique_graphs"]
    print(f"seg stage: {n_res} resolutions, {graphs} graphs")
    # per resolution and network: the G phase and the D phase (grad mode for G_seg; for D_seg whether its input
    # requires grad); the recompile reasons (TORCH_LOGS=recompiles) are these, the size and ``res``, never alpha.
    # Measured: 3 resolutions -> 14 graphs (G_seg 6, D_seg 8).
    assert 2 * n_res <= graphs <= 2 * 2 * n_res + 2, graphs
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compile_setting_is_off_by_default_and_validated(tmp_path):
    from sbgan_fast.config import build_config
    from sbgan_fast.config.schema import ConfigError
    assert tiny_cfg(tmp_path).compile is False
    assert tiny_cfg(tmp_path, compile=True).compile is True          # what `--compile` passes
    with pytest.raises(ConfigError, match="compile"):
        build_config("demo", None, ["compile=maybe"])
