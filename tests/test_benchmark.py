"""Benchmark structure (never timings), the cost model behind its predicted ratio, and memory vs passes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dualprop import Learner, models
from dualprop.benchmark import (
    BenchSettings,
    _cpu_allocation_peak,
    build_model,
    default_variants,
    format_report,
    parse_variant,
    predicted_ratio,
    run_benchmark,
)
from dualprop.blocks import Block


def test_parse_variant():
    assert parse_variant("bp").rule == "bp"
    fused = parse_variant("dpT-fused")
    assert (fused.rule, fused.schedule, fused.passes, fused.implementation) == ("dpT", "backward", 1, "fused")
    generic = parse_variant("dp-fwbw2")
    assert (generic.rule, generic.schedule, generic.passes, generic.implementation) == (
        "dp",
        "forward-backward",
        2,
        "generic",
    )
    for bad in ("bp-fw2", "dpT", "xx-fw2", "dpT-sideways3"):
        with pytest.raises(ValueError):
            parse_variant(bad)


def test_predicted_ratio_counts_the_products_of_the_visits_that_can_change_a_layer():
    # L = 3 blocks, worked by hand. forward × 3: pass 1 changes only layer 3; pass 2 layers 2 and 3 (one
    # recomputed drive: 3); pass 3 all (drives of 2 and 3 recomputed): U = 3, R = 3, V = 3, S = 0 → (3 + 9)/9.
    assert predicted_ratio(parse_variant("dpT-fw3"), 3) == pytest.approx(12 / 9)
    # forward-backward × 3: [3,2,1 | 2,3,2,1 | 1,2,3,2,1 | 1], the two repeated visits of layer 1 skipped:
    # U = 3, R = 4, V = 8, and the drives of layers 2 and 3 left out of date for J: S = 2 → (3 + 17)/9.
    assert predicted_ratio(parse_variant("dpT-fwbw3"), 3) == pytest.approx(20 / 9)
    # L = 6, forward × 2: pass 1 moves the output, pass 2 layer 5 (one feedback product) and the output
    # (its drive recomputed); layers 1–4 never move, so their updates are exactly zero and not computed:
    # U = 2, R = 1, V = 1, S = 0 → (6 + 4)/18.
    assert predicted_ratio(parse_variant("dpT-fw2"), 6) == pytest.approx(10 / 18)
    assert predicted_ratio(parse_variant("dpT-fused"), 3) == 1.0
    assert predicted_ratio(parse_variant("bp"), 3) == 1.0


def test_build_model_and_bad_settings():
    model, shape = build_model("mlp:6-8-3")
    assert shape == (6,) and model(torch.zeros(2, 6)).shape == (2, 3)
    assert build_model("digits-mlp")[1] == (64,)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bp"):
        BenchSettings(variants=["dpT-fused"]).check()
    with pytest.raises(ValueError, match="repeats"):
        BenchSettings(repeats=0).check()
    with pytest.raises(ValueError, match="dtype"):
        BenchSettings(dtype="int8").check()


@pytest.mark.slow
def test_run_benchmark_reports_ratios_against_bp_of_the_same_run():
    threads = torch.get_num_threads()
    settings = BenchSettings(model="mlp:6-8-8-3", batch_size=4, repeats=3, warmup=1, passes=2, threads=1)
    report = run_benchmark(settings)
    assert [r.name for r in report.results] == default_variants(2)
    bp = report.result("bp")
    assert bp.time_ratio == 1.0 and bp.memory_ratio == 1.0
    for r in report.results:
        assert r.error is None and len(r.step_times_s) == 3
        assert r.time_ratio == pytest.approx(r.median_step_s / bp.median_step_s)
        assert r.memory_ratio == pytest.approx(r.peak_bytes / bp.peak_bytes)
    # bp's peak at least holds the parameters, their gradients and momentum (3 × 4 bytes per parameter).
    parameters = sum(p.numel() for p in build_model("mlp:6-8-8-3")[0].parameters())
    assert bp.peak_bytes >= 3 * 4 * parameters
    assert report.result("dpT-fw2").layer_updates == 6 and report.depth == 3
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"settings", "environment", "depth", "results"}
    assert data["settings"]["batch_size"] == 4 and data["environment"]["torch_threads"] == 1
    assert {
        "name",
        "median_step_s",
        "time_ratio",
        "peak_bytes",
        "memory_ratio",
        "predicted_ratio",
        "layer_updates",
        "step_times_s",
        "error",
    } <= set(data["results"][0])
    table = format_report(report)
    assert all(r.name in table for r in report.results) and "predicted" in table
    assert torch.get_num_threads() == threads and not math.isnan(bp.median_step_s)


def test_cpu_allocation_peak_sees_a_temporary_and_not_earlier_memory():
    kept = torch.ones(50_000)

    def step():
        temporary = torch.empty(100_000)  # 400 kB, freed at once
        del temporary
        kept.add_(1)

    peak = _cpu_allocation_peak(step)
    assert 400_000 <= peak < 420_000


def _count_calls(learner: Learner, monkeypatch) -> dict[str, int]:
    counts = {"linear": 0, "vjp": 0}
    for block in learner.network.blocks:
        for part in block.parts:
            part.register_forward_hook(lambda *args: counts.__setitem__("linear", counts["linear"] + 1))
    original = Block.vjp

    def counted(self, *args, **kwargs):
        counts["vjp"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Block, "vjp", counted)
    return counts


@pytest.mark.parametrize("schedule, passes", [("forward", 3), ("forward-backward", 2), ("backward", 1)])
def test_generic_step_runs_one_block_forward_per_update_and_one_vjp_per_hidden_update(schedule, passes, monkeypatch):
    """Cost model of the predicted ratio: L feed-forward + at most U update forwards, one VJP
    per hidden-layer update, nothing recomputed: an update reuses its drive unless the layer below changed,
    and a visit is skipped when neither neighbour changed since the layer's last visit (the feed-forward
    state of a hidden layer is its visit with every δ zero)."""
    model = models.mlp([5, 6, 6, 6, 3])
    learner = Learner(model, rule="dpT", alpha=0.5, schedule=schedule, passes=passes, implementation="generic")
    counts = _count_calls(learner, monkeypatch)
    learner.step(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    depth, order = learner.network.depth, learner.order
    changes = [0] * (depth + 2)
    read = {k: (0, 0) for k in range(1, depth)}  # what each hidden layer read at its last visit
    stale, drive_forwards, vjps = set(), 0, 0  # layers whose drive is out of date
    for k in order:
        stamp = (changes[k - 1], changes[k + 1]) if k < depth else (changes[k - 1],)
        if read.get(k) == stamp:
            continue
        read[k] = stamp
        drive_forwards += k in stale
        vjps += k < depth
        stale.discard(k)
        stale.add(k + 1)
        changes[k] += 1
    # feed-forward, recomputed drives, and for J only the drives left out of date (the update of a
    # Linear block is written from its drive, not by running it again)
    assert counts["linear"] == depth + drive_forwards + len(stale & set(range(1, depth + 1)))
    assert counts["vjp"] == vjps
    assert vjps < sum(1 for k in order if k < depth) or schedule == "backward"


def test_fused_step_runs_each_block_once(monkeypatch):
    learner = Learner(models.mlp([5, 6, 6, 3]), rule="dpT", alpha=0.0, schedule="backward")
    counts = _count_calls(learner, monkeypatch)
    learner.step(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert counts == {"linear": 3, "vjp": 0}


@pytest.mark.slow
def test_generic_peak_memory_does_not_grow_with_passes():
    model = models.mlp([32, 64, 64, 64, 10])
    x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))
    peaks = []
    for passes in (4, 8):  # (by pass 4 the nudge has reached layer 1: fewer passes skip visits)
        learner = Learner(model, rule="dp", alpha=0.5, schedule="forward", passes=passes, implementation="generic")
        learner.step(x, y)  # allocate .grad once, so both measured steps start alike
        peaks.append(_cpu_allocation_peak(lambda learner=learner: learner.step(x, y)))
    state_bytes = 16 * 64 * 4
    assert peaks[0] > state_bytes
    assert abs(peaks[1] - peaks[0]) <= state_bytes
