"""Data-parallel training on 2 CPU processes (gloo, localhost): the averaged update equals the update of
the union of the ranks' batches, replicas stay bit-identical, the collectives agree across ranks, and a
failing or hanging rank ends the job with one line and a non-zero status instead of a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from dualprop import Learner, models
from dualprop.training.distributed import (
    DistributedContext,
    any_rank,
    broadcast_from_main,
    current_context,
    data_parallel,
    launched_distributed,
    process_group,
    sum_across_ranks,
)

from conftest import free_port

WORLD_SIZE = 2
STEPS = 3
PER_RANK = 5
CASES = {
    "bp": dict(rule="bp"),
    "dp": dict(rule="dp", alpha=0.3, beta=0.1, schedule="forward", passes=3, implementation="generic"),
    "dpT": dict(rule="dpT", alpha=0.5, beta=0.2, schedule="forward-backward", passes=2, implementation="generic"),
    "dpT-fused": dict(rule="dpT", alpha=0.0, beta=0.2, schedule="backward", implementation="fused"),
    "dp-fused": dict(rule="dp", alpha=0.5, beta=0.1, schedule="backward", implementation="fused"),
    "dp-damped": dict(rule="dp-damped", alpha=0.2, beta=0.5, schedule="forward", passes=3),
    "adversarial": dict(rule="adversarial", beta=0.05),
}


def rank_environment(rank: int, port: int) -> dict[str, str]:
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": str(WORLD_SIZE),
        "LOCAL_RANK": str(rank),
    }


def network(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return models.mlp([6, 8, 7, 4], "tanh").double()


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``STEPS`` batches of ``WORLD_SIZE · PER_RANK`` samples; rank r takes rows ``r·PER_RANK …``."""
    generator = torch.Generator().manual_seed(11)
    size = WORLD_SIZE * PER_RANK
    return [
        (
            torch.randn(size, 6, generator=generator, dtype=torch.float64),
            torch.randint(0, 4, (size,), generator=generator),
        )
        for _ in range(STEPS)
    ]


def _worker(rank: int, port: int, directory: str) -> None:
    """One rank: the collectives, rank 0's weights after wrapping, then per case ``STEPS`` SGD steps
    on this rank's part of each global batch; the first averaged update and the final weights are saved."""
    os.environ.update(rank_environment(rank, port))
    torch.set_num_threads(1)
    out = Path(directory)
    with process_group("cpu", timeout_s=30) as context:
        assert context == current_context() == DistributedContext(rank, WORLD_SIZE, torch.device("cpu"))
        collectives = {
            "broadcast": broadcast_from_main(f"run-of-rank-{rank}"),
            "sum": sum_across_ranks([rank + 1.0, 10.0, 0.5]),
            "any": any_rank([rank == 1, False]),
        }
        torch.save(collectives, out / f"collectives-{rank}.pt")
        differently_seeded = data_parallel(network(seed=100 + rank), context)
        torch.save([p.detach().clone() for p in differently_seeded.parameters()], out / f"wrapped-{rank}.pt")
        for name, settings in CASES.items():
            model = network(seed=0)
            learner = Learner(data_parallel(model, context), **settings)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for step, (x, y) in enumerate(global_batches()):
                part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
                optimizer.zero_grad()
                learner.step(x[part], y[part])
                if step == 0:
                    torch.save([p.grad.clone() for p in model.parameters()], out / f"{name}-update-{rank}.pt")
                optimizer.step()
            torch.save([p.detach().clone() for p in model.parameters()], out / f"{name}-weights-{rank}.pt")


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(free_port(), str(directory)), nprocs=WORLD_SIZE, join=True, start_method="spawn")
    return directory


def load(directory: Path, name: str) -> list:
    return torch.load(directory / name, weights_only=True)


@pytest.mark.slow
def test_collectives_agree_across_ranks(two_rank_results):
    for rank in range(WORLD_SIZE):
        values = load(two_rank_results, f"collectives-{rank}.pt")
        assert values["broadcast"] == "run-of-rank-0"
        assert values["sum"] == [3.0, 20.0, 1.0]
        assert values["any"] == [True, False]


@pytest.mark.slow
def test_wrapping_copies_rank_zero_weights(two_rank_results):
    rank0, rank1 = (load(two_rank_results, f"wrapped-{r}.pt") for r in range(WORLD_SIZE))
    assert not torch.equal(rank0[0], [p.detach() for p in network(seed=101).parameters()][0])  # seeds differ
    for a, b, expected in zip(rank0, rank1, network(seed=100).parameters()):
        assert torch.equal(a, b) and torch.equal(a, expected.detach())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_replicas_stay_bit_identical(two_rank_results, name):
    rank0, rank1 = (load(two_rank_results, f"{name}-weights-{r}.pt") for r in range(WORLD_SIZE))
    initial = list(network(seed=0).parameters())
    for a, b, start in zip(rank0, rank1, initial):
        assert torch.equal(a, b)
        assert not torch.equal(a, start.detach())  # training moved them


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.slow
def test_two_rank_update_equals_one_process_update_on_the_union(two_rank_results, name):
    model = network(seed=0)
    x, y = global_batches()[0]
    Learner(model, **CASES[name]).step(x, y)
    for rank in range(WORLD_SIZE):
        update = load(two_rank_results, f"{name}-update-{rank}.pt")
        for got, p in zip(update, model.parameters()):
            torch.testing.assert_close(got, p.grad, rtol=1e-10, atol=1e-12)


def test_launcher_variables_are_detected():
    assert launched_distributed({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not launched_distributed({"LOCAL_RANK": "0"})


def test_without_a_launcher_there_is_no_process_group():
    with process_group() as context:
        assert context is None
        assert broadcast_from_main("x") == "x" and sum_across_ranks([1, 2]) == [1.0, 2.0]


# -- failing ranks through the command line -------------------------------------------------------------


def cli(rank: int, port: int, *args: str) -> subprocess.Popen:
    environment = {**os.environ, **rank_environment(rank, port), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dualprop", "train", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_flags(out: Path) -> list[str]:
    return [
        "--epochs",
        "1",
        "--limit-batches",
        "2",
        "--no-baseline",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


@pytest.mark.slow
def test_a_rank_that_fails_ends_the_job_on_every_rank(tmp_path):
    """Rank 1 stops with bad data before the first collective; rank 0 must not wait for it."""
    port = free_port()
    started = time.monotonic()
    main = cli(0, port, *train_flags(tmp_path / "runs"), "--dist-timeout", "20")
    failing = cli(
        1,
        port,
        *train_flags(tmp_path / "runs"),
        "--dist-timeout",
        "20",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "no-data"),
    )
    _, failing_err = failing.communicate(timeout=60)
    _, main_err = main.communicate(timeout=60)
    assert time.monotonic() - started < 50
    assert failing.returncode == 2 and "mnist" in failing_err
    assert main.returncode == 4
    assert main_err.strip().count("\n") == 0 and main_err.startswith("dualprop: error: rank 0 of 2 stopped")
    assert not any((tmp_path / "runs").glob("*/summary.json"))


@pytest.mark.slow
def test_a_rank_that_hangs_ends_the_job_after_the_timeout(tmp_path):
    """Rank 1 joins the job and then never takes part: rank 0 gives up after --dist-timeout."""
    port = free_port()
    hanging_code = "import time, torch.distributed as dist; dist.init_process_group('gloo'); time.sleep(120)"
    hanging = subprocess.Popen([sys.executable, "-c", hanging_code], env={**os.environ, **rank_environment(1, port)})
    try:
        started = time.monotonic()
        main = cli(0, port, *train_flags(tmp_path / "runs"), "--dist-timeout", "3")
        _, main_err = main.communicate(timeout=60)
        assert time.monotonic() - started < 40
    finally:
        hanging.kill()
        hanging.wait()
    assert main.returncode == 4
    assert main_err.strip().count("\n") == 0 and "rank 0 of 2 stopped" in main_err and "3 s timeout" in main_err
