"""The per-epoch diagnostics (`tal_train.diagnostics`) on inputs whose answer is known, and the
per-query metrics the benchmark bootstraps (their means are the table's mAP and top-1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tal_train.data.records import ImageRecord
from tal_train.diagnostics import (AttentionRecorder, expert_divergence, msda_attention,
                                   stage_of, stream_agreement, weight_statistics)
from tal_train.evaluation import per_query_metrics, rank_metrics
from tal_train.models import DABN, DomainNorm, TALConfig, build_model


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(TALConfig.preset("tiny", domains=("a", "b", "c"), image_size=(64, 32),
                                        **overrides)).eval()


def test_stage_names():
    assert stage_of("backbone.layer3.1.bn2") == "res4"
    assert stage_of("backbone.layer1.0.downsample.1") == "res2"
    assert stage_of("necks.res5.bn") == "neck_res5"
    assert stage_of("backbone.bn1") == "stem"


def test_expert_divergence_of_known_statistics():
    model = _model(dabn_stats="own")
    want = {"res2": 0.5, "res3": 1.0, "res4": 2.0, "res5": 0.0, "neck_res4": 3.0, "neck_res5": 0.25}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, DomainNorm):
                r = want[stage_of(name)]
                sd = 2.0  # within-domain std of every expert
                for i, bn in enumerate(m.experts):  # means -r*sd, 0, +r*sd: population std r*sd*sqrt(2/3)
                    bn.running_mean.fill_((i - 1) * r * sd / math.sqrt(2 / 3))
                    bn.running_var.fill_(sd ** 2)
                m.di.running_mean.fill_(0.5 * sd)  # experts average 0: offset 0.5
    got = expert_divergence(model)
    assert got["expert_divergence"] == pytest.approx(want, abs=1e-4)
    assert got["di_offset"] == pytest.approx({k: 0.5 for k in want}, abs=1e-4)
    assert "di_offset" not in expert_divergence(_model())
    assert expert_divergence(build_model(TALConfig.preset("tiny", domains=("a",)))) == {}
    assert expert_divergence(_model(streams=("di",), di_norm="bn")) == {}  # experts never trained


def test_weight_statistics_extremes():
    uniform = torch.full((5, 4), 0.25)
    assert weight_statistics(uniform) == {"entropy": 1.0, "spread": 0.0}
    one_hot = torch.eye(4)[[0, 0, 0]]
    assert weight_statistics(one_hot) == pytest.approx({"entropy": 0.0, "spread": 0.0}, abs=1e-6)
    alternating = torch.eye(2)[[0, 1, 0, 1]]  # input-dependent: std 0.5 for each expert
    assert weight_statistics(alternating) == pytest.approx({"entropy": 0.0, "spread": 0.5},
                                                           abs=1e-6)


def test_recorder_captures_each_dabn_layers_weights_on_its_input():
    model = _model()
    inputs = {}
    def keep(name):
        def hook(module, args):
            inputs[name] = args[0]
        return hook

    hooks = [m.register_forward_pre_hook(keep(name))
             for name, m in model.named_modules() if isinstance(m, DABN)]
    x = torch.randn(3, 3, 64, 32)
    with AttentionRecorder(model) as recorder:
        model.extract(x)
    for h in hooks:
        h.remove()
    assert sorted(recorder.weights) == sorted(inputs)  # every DABN layer, by its name
    dabns = dict(model.named_modules())
    for layer, chunks in recorder.weights.items():
        (w,) = chunks
        assert w.shape == (3, 3)
        torch.testing.assert_close(w, dabns[layer].weights(inputs[layer]))
    summary = recorder.summary()
    assert set(summary) == {"res2", "res3", "res4", "res5", "neck_res4", "neck_res5"}
    with AttentionRecorder(model) as again:
        pass
    model.extract(x)
    assert not again.weights  # hooks are removed on exit


def test_msda_attention_uniform_when_the_attention_is_flat():
    model = _model()
    x = torch.randn(4, 3, 64, 32)
    feats = model.extract(x)
    random = msda_attention(model, feats, feats)
    assert set(random) == {"res4", "res5"} and all(s["entropy"] < 1 for s in random.values())
    with torch.no_grad():
        for att in model.msda_head.attention:
            att[2].weight.zero_()
            att[2].bias.zero_()
    flat = msda_attention(model, feats, feats)
    assert all(s == pytest.approx({"entropy": 1.0, "spread": 0.0}) for s in flat.values())
    assert msda_attention(_model(ds_head="avg"), feats, feats) == {}


def test_stream_agreement_against_numpy():
    g = torch.Generator().manual_seed(int(np.random.randint(1 << 30)))
    a, noise = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    b = a + noise
    got = stream_agreement(a, b)
    assert got["ds_di_correlation"] == pytest.approx(
        np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1], abs=1e-5)
    same = (a.argmax(1) == b.argmax(1)).float().mean().item()
    assert got["ds_di_top1_agreement"] == pytest.approx(same, abs=1e-5)
    assert stream_agreement(a, a) == {"ds_di_correlation": 1.0, "ds_di_top1_agreement": 1.0}
    assert stream_agreement(a, -a)["ds_di_correlation"] == -1.0


def test_per_query_metrics_average_to_the_rank_metrics():
    rng = np.random.default_rng(1)
    query = [ImageRecord(f"q{i}", int(rng.integers(1, 6)), int(rng.integers(0, 3)), "t")
             for i in range(30)]
    gallery = [ImageRecord(f"g{i}", int(rng.integers(0, 6)), int(rng.integers(0, 3)), "t")
               for i in range(80)]
    scores = torch.from_numpy(rng.standard_normal((30, 80)).astype(np.float32))
    scores[:, :5] = scores[:, :5].round()  # some ties
    per_query = per_query_metrics(scores, query, gallery)
    table = rank_metrics(scores, query, gallery)
    assert 0 < len(per_query["ap"]) <= 30 and set(per_query["top1"]) <= {0, 1}
    assert 100 * np.mean(per_query["ap"]) == pytest.approx(table["mAP"], abs=0.006)
    assert 100 * np.mean(per_query["top1"]) == pytest.approx(table["top1"], abs=0.006)
    valid = {i for i, q in enumerate(query)
             if any(g.pid == q.pid and g.camid != q.camid for g in gallery)}
    assert set(per_query["query"]) == valid
