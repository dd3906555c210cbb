"""One run trained data-parallel by two CPU processes (torchrun, gloo) equals the run in
one process with the same global batch, and only rank 0 writes files; the runner gives a
job two processes, locally and as a Slurm job of two tasks. A method gets the global batch
from its context, never by importing the engine."""

import ast
import functools
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from kdbench.engine import distributed
from kdbench import list_methods, store
from kdbench.cli import main
from kdbench.method import METHODS
from kdbench.runner import RunnerOptions, run_suite
from kdbench.spec import RunSpec
from kdbench.suite import load_suite
from kdbench.engine import EngineOptions, EpochBatches, open_data

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

# lr 0.01, no augmentation, NCHW: a trajectory that float rounding (summation order across
# two processes, as across thread counts) moves by far less than a sample's worth of
# accuracy. Channels-last, the engine's default, would move it by more from its kernels
# alone: one process, NHWC against NCHW, 2 epochs of the runs below, differed by up to 4
# test samples and 0.7% in the KD loss (2026-12-07), which a tolerance wide enough for it
# would let a real fault through.
NCHW = functools.partial(EngineOptions, channels_last=False)
COMMON = ["--dataset", "digits", "--data-option", "image_size=8", "--epochs", "2", "--batch-size", "64",
          "--lr", "0.01", "--no-augment", "--device", "cpu", "--quiet"]
TEACHER = ["train", "--student", "resnet14", "--method", "none", *COMMON]

# Run under torchrun: log which rank writes which file, then train like `kdbench train`.
LAUNCHED = textwrap.dedent("""
    import functools, os, sys
    from pathlib import Path
    import kdbench.engine
    from kdbench.store import checkpoints
    from kdbench.store import run_folder
    from kdbench.cli import main

    log = Path(sys.argv[1]) / f"writes-{os.environ['RANK']}.txt"
    real = checkpoints.atomic_write_bytes

    def logged(path, data):
        with log.open("a") as f:
            f.write(f"{path}\\n")
        real(path, data)

    checkpoints.atomic_write_bytes = run_folder.atomic_write_bytes = logged
    kdbench.engine.EngineOptions = functools.partial(kdbench.engine.EngineOptions, channels_last=False)  # NCHW (COMMON)
    for argv in sys.argv[2:]:
        assert main(argv.split("\\x1f")) == 0
""")


def comparable_rows(record):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_seconds")} for row in record["metrics"]]


def assert_same_metrics(single, parallel, test_size, val_size, loss_rtol=1e-4):
    one_sample = {"val": 100 / val_size, "test": 100 / test_size}
    rows_1, rows_2 = comparable_rows(single), comparable_rows(parallel)
    assert [r["epoch"] for r in rows_1] == [r["epoch"] for r in rows_2] == [1, 2]
    for a, b in zip(rows_1, rows_2):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith("loss_"):
                assert math.isclose(a[key], b[key], rel_tol=loss_rtol), (key, a, b)
            elif key.endswith(("top1", "top5")):
                assert abs(a[key] - b[key]) <= one_sample[key.split("_")[0]] + 1e-9, (key, a, b)
            else:
                assert a[key] == b[key], key


def test_epoch_batches_split_each_global_batch_among_ranks():
    single = list(EpochBatches(10, 4, seed=3))
    assert [len(b) for b in single] == [4, 4, 2]
    ranks = [list(EpochBatches(10, 4, seed=3, rank=r, world=2)) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in single]
    assert [len(b) for b in ranks[0]] == [2, 2, 1]
    three = [list(EpochBatches(9, 4, seed=3, rank=r, world=3)) for r in range(3)]  # last batch of 1 < 3 ranks
    assert all(len(batches) == 2 for batches in three)


def test_two_processes_train_like_one(tmp_path, monkeypatch):
    monkeypatch.setattr("kdbench.engine.EngineOptions", NCHW)  # what the CLI builds its options from
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert main([*TEACHER, "--out", str(single)]) == 0
    (teacher_id,) = [p.name for p in single.iterdir()]
    student = ["train", "--student", "resnet8", "--teacher", "resnet14", "--method", "kd",
               "--teacher-checkpoint", str(single / teacher_id / store.WEIGHTS), *COMMON]
    assert main([*student, "--out", str(single)]) == 0

    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    commands = ["\x1f".join([*argv, "--out", str(parallel)]) for argv in (TEACHER, student)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), *commands], env=env, capture_output=True, text=True, timeout=180,
                           check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run_ids = sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in parallel.iterdir()) == run_ids and len(run_ids) == 2
    for run_id in run_ids:
        one = store.read_json(single / run_id / store.RECORD)
        two = store.read_json(parallel / run_id / store.RECORD)
        assert two["environment"]["world_size"] == 2 and "world_size" not in one["environment"]
        data = open_data(RunSpec(**one["spec"]), EngineOptions(), augment=False)
        assert_same_metrics(one, two, test_size=len(data.test), val_size=len(data.val))
        files = [sorted(p.name for p in (out / run_id).iterdir()) for out in (single, parallel)]
        assert files[0] == files[1]
    assert not (tmp_path / "writes-1.txt").exists()  # rank 1 wrote nothing
    written = {os.path.basename(line) for line in (tmp_path / "writes-0.txt").read_text().split()}
    assert {store.SPEC, store.METRICS, store.CHECKPOINT, store.WEIGHTS, store.TEST_LOGITS,
            store.RECORD} <= written
    assert json.loads((parallel / run_ids[0] / store.METRICS).read_text().splitlines()[0])["epoch"] == 1


SUITE = textwrap.dedent("""
    name: tiny
    recipe: {epochs: 2, batch_size: 64, lr: 0.01, augment: false}
    datasets: {digits: {options: {image_size: 8}}}
    pairs: [{dataset: digits, teacher: resnet14, student: resnet8}]
    methods: {none: {}, kd: {}}
""")


def run_tiny_suite(directory, executor, only=None):
    path = directory / "suite.yaml"
    path.write_text(SUITE + f"executor: {json.dumps(executor)}\n")
    options = RunnerOptions(out=directory, workers=1, only=only or {}, printer=lambda line: None,
                            engine=NCHW(progress=False))
    assert run_suite(load_suite(path), options).ok
    return {p.parent.name: store.read_json(p) for p in directory.glob("tiny/runs/*/record.json")}


@pytest.fixture(scope="module")
def one_process_records(tmp_path_factory):
    return run_tiny_suite(tmp_path_factory.mktemp("one"), {"processes_per_job": 1})


@pytest.mark.parametrize("executor, only", [
    ({"processes_per_job": 2}, None),  # a teacher, then a cohort (none, kd), each over two processes
    ({"kind": "slurm", "processes_per_job": 2, "slurm": {"cluster": "local", "timeout_min": 10}}, {"method": "none"}),
], ids=["local", "slurm"])
def test_the_runner_gives_a_job_two_processes(tmp_path, one_process_records, executor, only):
    two = run_tiny_suite(tmp_path, executor, only)
    assert two and set(two) <= set(one_process_records)
    data = open_data(RunSpec(**next(iter(two.values()))["spec"]), EngineOptions(), augment=False)
    for run_id, record in two.items():
        assert record["environment"]["world_size"] == 2
        # a student's teacher was itself trained over two processes, so it differs by rounding too
        assert_same_metrics(one_process_records[run_id], record, test_size=len(data.test), val_size=len(data.val),
                            loss_rtol=3e-3)


def _gather_on_rank():
    distributed.setup(torch.device("cpu"))
    rank = distributed.rank()
    rows = torch.arange(3 - rank)[:, None] + 10 * rank  # uneven: 3 rows on rank 0, 2 on rank 1
    gathered = distributed.all_gather_cat(rows.float().repeat(1, 2))
    labels = distributed.all_gather_cat(torch.tensor([rank] * (3 - rank)))
    distributed.teardown()
    return gathered.tolist(), labels.tolist()


def test_all_gather_cat_concatenates_the_ranks_rows_in_rank_order():
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    answers = elastic_launch(config, _gather_on_rank)()
    expected = ([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [10.0, 10.0], [11.0, 11.0]], [0, 0, 0, 1, 1])
    assert answers[0] == answers[1] == expected
    single = torch.ones(2, 3)
    assert distributed.all_gather_cat(single) is single  # no process group: the identity


def _train_user_methods(out: str) -> dict:
    """On each rank: a cohort of two user methods trained over two processes. One keeps
    state across samples from what its context's ``gather`` gives it (it never imports
    kdbench.engine.distributed), and has a parameter it never uses and one it uses every other
    step; the other raises in its second step on rank 1 only."""
    from pathlib import Path

    import torch.nn.functional as F

    from kdbench.engine import train_cohort
    from torch import nn

    from kdbench.method import Method, Needs, register_method
    from kdbench.spec import DataSpec, Recipe

    torch.set_num_threads(1)
    seen: dict[str, list] = {"gathered": [], "own": []}

    class CrossEntropyOnly(Method):
        @property
        def needs(self) -> Needs:
            return Needs(teacher=False)

        def loss(self, student, teacher, batch, epoch):
            return {"ce": F.cross_entropy(student.logits, batch.targets)}

    @register_method
    class GatheredIndices(CrossEntropyOnly):
        name = "gathered_indices"

        def setup(self, context):
            self.gather = context.gather
            self.unused, self.every_other = nn.Parameter(torch.ones(3)), nn.Parameter(torch.zeros(()))
            seen["method"] = self

        def loss(self, student, teacher, batch, epoch):
            seen["gathered"].append(self.gather(batch.index).tolist())
            seen["own"].append(batch.index.tolist())
            terms = super().loss(student, teacher, batch, epoch)
            if len(seen["own"]) % 2:
                terms["ce"] = terms["ce"] + (self.every_other - 1) ** 2
            return terms

    @register_method
    class FailsOnRankOne(CrossEntropyOnly):
        name = "fails_on_rank_one"
        steps = 0

        def loss(self, student, teacher, batch, epoch):
            self.steps += 1
            if self.steps == 2 and distributed.rank() == 1:
                raise RuntimeError("rank 1's step failed")
            return super().loss(student, teacher, batch, epoch)

    recipe = Recipe(epochs=1, batch_size=32, lr=0.01, augment="none")
    specs = [RunSpec(dataset=DataSpec(name="digits", options={"image_size": 8}), student="resnet8", method=name,
                     recipe=recipe, seed=0) for name in ("gathered_indices", "fails_on_rank_one")]
    results = train_cohort(specs, [Path(out) / spec.method for spec in specs],
                           EngineOptions(device="cpu", progress=False, subset=100))
    distributed.teardown()
    method = seen.pop("method")
    return {**seen, "finished": isinstance(results[0], store.RunRecord), "failure": str(results[1]),
            "unused": method.unused.tolist(), "every_other": method.every_other.item()}


def test_a_user_method_gets_the_global_batch_from_its_context(tmp_path):
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from kdbench.engine import epoch_seed
    from kdbench.method import TrainContext

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    answers = elastic_launch(config, _train_user_methods)(str(tmp_path))
    single = list(EpochBatches(100, 32, seed=epoch_seed(0, 1, 0)))  # the single process's batches, 32, 32, 32, 4
    for rank in (0, 1):
        assert answers[rank]["finished"]
        assert answers[rank]["gathered"] == single  # every rank's rows, in the single-process order
        assert answers[rank]["own"] == [b[rank * len(b) // 2:(rank + 1) * len(b) // 2] for b in single]
        # no rank's gradient: none, so SGD's weight decay leaves the parameter alone
        assert answers[rank]["unused"] == [1.0, 1.0, 1.0]
    assert answers[0]["every_other"] == answers[1]["every_other"] > 0  # stepped, the same on both ranks
    # a step that raised on one rank is skipped by both, and the run fails on both; its cohort goes on
    assert "rank 1's step failed" in answers[1]["failure"]
    assert "failed on another process" in answers[0]["failure"]
    rows = torch.ones(2, 3)
    context = TrainContext(2, torch.zeros(2), 1, 0, student=None, teacher=None)
    assert context.gather(rows) is rows  # one process: the identity


@pytest.mark.parametrize("name", list_methods())
def test_no_method_reaches_into_the_engine(name):
    """A method's cross-rank needs come through its TrainContext: its module imports neither
    kdbench.engine.distributed nor the engine (the contract is kdbench.method)."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(METHODS.get(name))))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module for alias in node.names}
    assert not {m for m in imported if m.startswith(("kdbench.engine.distributed", "kdbench.engine"))}, imported
