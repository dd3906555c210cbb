"""The ``kdbench`` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .errors import ConfigError, KDBenchError, MachineError, explain_validation


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs, values read as YAML scalars (``T=4`` gives an int)."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"hyperparameter override '{pair}' is not of the form key=value")
        values[key] = yaml.safe_load(raw)
    return values


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse names the option when it fails)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def output_folder(out: str, option: str = "--out") -> Path:
    """``out`` as a folder to write in: refused before anything is written when it, or a
    folder above it, is a file."""
    path = Path(out)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{option} {out}: {existing} is a file, not a folder; give a folder (it is created if "
                          "missing)")
    return path


def cmd_list(args: argparse.Namespace) -> int:
    from . import list_methods, list_models
    from .data import list_datasets

    names = {"methods": list_methods, "models": list_models, "datasets": list_datasets}[args.what]()
    print("\n".join(names))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a run, its teacher first if need be. Under ``torchrun`` (``torchrun --nproc_per_node N
    -m kdbench.cli train ...``) each run trains data-parallel over the N processes."""
    from .method import load_method_files
    from .spec import DataSpec, Recipe, RunSpec, TeacherRef
    from .engine.tracking import Tracking, require
    from .engine import EngineOptions
    from .runner.runs import ensure_run

    out = output_folder(args.out)
    if args.method_file:
        load_method_files(*args.method_file)
    recipe = Recipe(**{k: v for k, v in {
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "schedule": args.schedule,
        "optimizer": args.optimizer, "weight_decay": args.weight_decay, "augment": "none" if args.no_augment else args.augment,
        "mixup_alpha": args.mixup_alpha, "cutmix_alpha": args.cutmix_alpha, "precision": args.precision,
    }.items() if v is not None})
    # under torchrun every process runs this; only the first one talks
    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)
    dataset = DataSpec(name=args.dataset, options=parse_overrides(args.data_option))
    # resolved before any training, so a bad name or value fails before the teacher trains
    spec = RunSpec(dataset=dataset, student=args.student, method=args.method,
                   hparams=parse_overrides(args.hparams), recipe=recipe, seed=args.seed)
    options = EngineOptions(device=args.device, data_root=args.data_root, workers=args.workers, progress=not args.quiet,
                            tracking=Tracking(require(args.track)))
    teacher = None
    if args.teacher:
        if args.teacher_checkpoint:
            teacher = TeacherRef(model=args.teacher, checkpoint=str(Path(args.teacher_checkpoint).resolve()))
        else:
            teacher_spec = RunSpec(dataset=dataset, student=args.teacher, method="none", recipe=recipe, seed=args.seed)
            say(f"teacher: {teacher_spec.describe()} [{teacher_spec.run_id}]")
            teacher_record = ensure_run(teacher_spec, out, options)
            say(f"teacher test top-1: {teacher_record.summary.test_top1_last:.2f}")
            teacher = TeacherRef(model=args.teacher, run_id=teacher_spec.run_id)
    spec = spec.replace(teacher=teacher)
    say(f"student: {spec.describe()} [{spec.run_id}]")
    record = ensure_run(spec, out, options)
    summary = record.summary
    best_val = (f", {summary.test_top1_best_val:.2f} (best val epoch {summary.best_val_epoch})"
                if summary.best_val_epoch is not None else " (no validation split)")
    say(f"student test top-1: {summary.test_top1_last:.2f} (last epoch){best_val}")
    say(f"record: {out / spec.run_id / 'record.json'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunnerOptions, plan_suite, run_plan
    from .runner.planning import ONLY_KEYS
    from .suite import load_suite
    from .engine.tracking import Tracking, require
    from .engine import EngineOptions

    only = {}
    for key, value in parse_overrides(args.only).items():
        if key not in ONLY_KEYS:
            raise ConfigError(f"--only {key}=…: unknown key; use one of {', '.join(ONLY_KEYS)}")
        only[key] = str(value)
    out = output_folder(args.out)
    suite = load_suite(args.suite, {"precision": args.precision} if args.precision else None)
    tracking = Tracking(require([*suite.file.track, *args.track]), group=suite.name)  # before any training
    options = RunnerOptions(
        out=out, dry_run=args.dry_run, smoke=args.smoke, only=only, retry_failed=args.retry_failed,
        workers=args.workers, engine=EngineOptions(device=args.device, data_root=args.data_root, progress=False,
                                                   stack_students=args.stack_students, tracking=tracking),
    )
    plan = plan_suite(suite, options)
    outcome = run_plan(plan)
    if args.dry_run:
        from .runner.cost import print_estimate

        if not args.no_estimate:
            print_estimate(plan)
        return 0 if outcome.ok else 1  # a script checking a suite learns of missing inputs
    directory = plan.directory
    print(f"[{suite.name}] {len(outcome.finished)} trained, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed; results in {directory}")
    for run_id, reason in outcome.failed.items():
        print(f"  failed {run_id}: {reason.splitlines()[0] if reason else ''}")
    if outcome.stopped:  # a Slurm job the cluster ended (scancel): not failed
        print(f"[{suite.name}] {len(outcome.stopped)} stopped by the cluster; the same command resumes them")
    if (outcome.finished or outcome.skipped) and not args.no_report:
        from .analysis.report import write_report

        written = write_report(directory)
        table = next(p for p in written if p.name == "table.md")
        print(f"\n{table.read_text()}\nreport (LaTeX, CSV, figures): {table.parent}")
    return 0 if outcome.ok else 1


def cmd_ablate(args: argparse.Namespace) -> int:
    """More trials of the suite's ablation, trained by the runner's worker (kdbench.runner.tuning);
    then its tables and figures, read from the study and the records (kdbench.analysis)."""
    from .analysis.ablation import write_ablation
    from .analysis.commands import print_written
    from .runner.tuning import run_ablation

    ablation = run_ablation(args.suite, out=args.out, trials=args.trials, workers=args.workers, storage=args.storage,
                            device=args.device)
    print_written(write_ablation(ablation, out=args.out, storage=args.storage))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .tools.bench import run_bench

    run_bench(args.teacher, args.student, args.batch_size, args.image_size, args.num_classes,
              args.methods or None, args.steps, args.rounds, args.device, args.dataset,
              large_images=args.large_images, through=args.through, precision=args.precision)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Make (prepare) or check (verify) the prepared store of a 224-px set (kdbench.data.prepared)."""
    from .data import create_dataset, resolve_data_root
    from .data.prepared import Listing, verify

    root = resolve_data_root(args.data_root)
    options = {**parse_overrides(args.data_option), "prepared": args.action == "prepare"}
    data = create_dataset(args.name, root, **options)
    if args.action == "prepare":
        store = data.train.store
        counts, size = store.index["counts"], store.index["bytes"]
        print(f"store: {store.directory}\n  {counts['train']} train / {counts['test']} test images, short side "
              f"{store.index['short_side']} px, {size / 2**30:.2f} GiB, sha256 {store.index['sha256']}")
        return 0
    result = verify(Listing.of_splits(data, root), sample=args.sample)
    print(f"store: {result.directory}\n  {result.decoded} image(s) decoded again and compared")
    for problem in result.problems:
        print(f"  problem: {problem}")
    print("  ok" if result.ok else f"  {len(result.problems)} problem(s); `kdbench data prepare` after deleting "
          "the store makes it anew")
    return 0 if result.ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine has, whether the suite's inputs are there, its fast paths' smoke and
    the suite's cost (kdbench.tools.doctor); 1 on any FAIL."""
    from .tools.doctor import run_doctor

    checks = run_doctor(args.suite, out=args.out, data_root=args.data_root, device_name=args.device,
                        paths_on_cpu=args.paths_on_cpu, compile_backend=args.compile_backend, skip=tuple(args.skip),
                        estimate=not args.no_estimate, json_path=args.json, precision=args.precision)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdbench", description="Benchmark and ablation harness for knowledge distillation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered methods, models or datasets")
    p.add_argument("what", choices=["methods", "models", "datasets"])
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("train", help="train one teacher→student run (the teacher first, unless given a checkpoint)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, help="a registered dataset (kdbench list datasets)")
    p.add_argument("--student", required=True, help="student model (kdbench list models, or timm:<name>)")
    p.add_argument("--teacher", help="teacher model; omit for a run without distillation")
    p.add_argument("--teacher-checkpoint", help="teacher weights ({'model': state_dict}); else the teacher is trained")
    p.add_argument("--method", default="kd", help="distillation method (kdbench list methods)")
    p.add_argument("hparams", nargs="*", metavar="key=value", help="method hyperparameters, e.g. temperature=2")
    p.add_argument("--data-option", action="append", default=[], metavar="key=value", help="dataset option, e.g. image_size=16")
    p.add_argument("--method-file", action="append", default=[], help="extra method file or folder to load")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--schedule", choices=["step", "cosine", "constant"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--augment", choices=["none", "standard", "strong"],
                   help="training augmentation: the set's crop + flip (standard, default), none, or strong "
                        "(standard, then MLKD's RandAugment + Cutout)")
    p.add_argument("--no-augment", action="store_true", help="train without data augmentation (= --augment none)")
    p.add_argument("--mixup-alpha", type=float, help="mixup on whole batches with this α (timm; default 0: off)")
    p.add_argument("--cutmix-alpha", type=float, help="CutMix on whole batches with this α (timm; default 0: off)")
    p.add_argument("--precision", help="training precision: fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler). Part of "
                        "each run's id (default fp32, as every published reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--workers", type=int, help="data-loader processes (default: 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--data-root", help="where real data sets live (default: $KDBENCH_DATA)")
    p.add_argument("--out", default="results/train", help="results folder; each run gets <out>/<run id>/")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--track", action="append", default=[], choices=["tensorboard", "wandb"],
                   help="stream each epoch's metrics to TensorBoard (event files in each run's folder) or W&B "
                        "(offline unless WANDB_MODE is set); repeat for both")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("run", help="run a suite: datasets × pairs × methods × seeds, resumable",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("suite", help="suite YAML file, e.g. suites/quick.yaml")
    p.add_argument("--out", default="results", help="results root; the suite writes <out>/<suite name>/")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and what is already done, and what they will cost in device-hours (step "
                        "times measured on this machine); train nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: no cost estimate (timing a suite's steps takes minutes on a CPU)")
    p.add_argument("--smoke", action="store_true", help="every run for one epoch on a tiny subset, into <name>-smoke/")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs with dataset/method/student/teacher/seed/pair = VALUE (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    p.add_argument("--no-report", action="store_true", help="do not write the report (kdbench report) at the end")
    p.add_argument("--workers", type=positive_int,
                   help="parallel jobs (default: one per GPU, else one per CPU core up to 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, or cuda")
    p.add_argument("--data-root", help="where real data sets live (default: the suite's data_root, else $KDBENCH_DATA)")
    p.add_argument("--track", action="append", default=[], choices=["tensorboard", "wandb"],
                   help="stream each epoch's metrics to TensorBoard (event files in each run's folder) or W&B "
                        "(offline unless WANDB_MODE is set); added to the suite's 'track:' list")
    p.add_argument("--stack-students", action="store_true",
                   help="step a cohort's students of one architecture as one vmapped network (for GPUs: see "
                        "kdbench bench (b); records then equal the separate runs' up to float rounding)")
    p.add_argument("--precision", help="training precision: fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler). Part of "
                        "each run's id: overrides the suite's recipes, teachers trained here "
                        "included, and so makes new runs")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("bench", help="time each method's step, a cohort against one-by-one, the data pipeline",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--methods", nargs="*", help="methods to time (default: all registered)")
    p.add_argument("--steps", type=int, help="steps per timing round (default: as many as fill 0.3 s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default="synthetic-fg", help="data set whose loader (c) times")
    p.add_argument("--large-images", type=int, default=300,
                   help="synthetic JPEGs of (c)'s 224-px case: folder loader against prepared store (0: skip it)")
    p.add_argument("--through", choices="abcd", default="d",
                   help="stop after this case (a: the step ratios alone); each case needs the ones before it")
    p.add_argument("--precision", default="fp32", help="training precision the steps run at: fp32, bf16 or fp16")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("data", help="prepare a 224-px set's store of decoded images, or verify it against its source",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="A prepared store holds a set's images decoded once and resized (short side 256 "
                                   "at 224 px); the data-set option prepared=true trains from it. Stores live in "
                                   "$KDBENCH_PREPARED, else in kdbench-prepared/ inside the data root.")
    p.add_argument("action", choices=["prepare", "verify"])
    p.add_argument("name", help="a 224-px data set read from image files, e.g. cub200")
    p.add_argument("--data-root", help="where real data sets live (default: $KDBENCH_DATA)")
    p.add_argument("--data-option", action="append", default=[], metavar="key=value",
                   help="dataset option that names the images, e.g. image_size=448 or path=… for imagefolder")
    p.add_argument("--sample", type=int, default=64, help="verify: images decoded again and compared")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser(
        "ablate", help="Optuna study of a method's hyperparameters from a suite's 'ablation:' block",
        description="Runs more trials of the study defined by the suite's 'ablation:' block (scored on the "
                    "validation split, TPE sampler, median pruning per epoch, resumable storage), retrains the "
                    "best configuration over the suite's seeds and writes trials.{csv,md,tex}, best.json and "
                    "figures to <out>/<suite>/ablation/. See kdbench.suite.ablation for the block's keys.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("suite", metavar="SUITE", help="suite YAML file with an 'ablation:' block")
    p.add_argument("--trials", type=int, help="trials to add in this call (default: the block's 'trials'; 0: only rewrite the outputs)")
    p.add_argument("--workers", type=int, help="processes sharing the study (default: the block's 'workers')")
    p.add_argument("--out", default="results", help="results root; the suite's folder is <out>/<suite name>/")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: the block's, else sqlite in <out>/<suite>/ablation/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.set_defaults(fn=cmd_ablate)

    p = sub.add_parser("doctor", help="will this machine run this suite? versions, devices, inputs, fast paths, cost",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="The machine (Python, torch, CUDA, cuDNN, NCCL, devices, cores, free disk); for a "
                                   "suite, its data sets, teacher checkpoints, prepared stores, results folder and "
                                   "tracking sinks, and its cost in device-hours; a smoke of each fast path (PASS, "
                                   "FAIL or SKIP with the reason). Exits 1 on any FAIL.")
    p.add_argument("suite", nargs="?", help="suite YAML file (omit: the machine and its fast paths only)")
    p.add_argument("--out", default="results", help="results root the suite would write to")
    p.add_argument("--data-root", help="where real data sets live (default: the suite's data_root, else $KDBENCH_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--paths-on-cpu", action="store_true",
                   help="smoke the GPU fast paths on the CPU too (they are SKIPped there otherwise)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile smoke")
    p.add_argument("--skip", action="append", default=[], metavar="PATH",
                   choices=["autocast", "channels-last", "device-held set", "prepared-store crop", "torch.compile",
                            "stacked students", "two-process step"], help="leave out this fast path (repeatable)")
    p.add_argument("--no-estimate", action="store_true", help="do not time the suite's steps for its cost")
    p.add_argument("--json", metavar="PATH", help="also write the findings to this JSON file")
    p.add_argument("--precision", help="fp32, bf16 or fp16: the suite's recipes at this precision (as kdbench run "
                                       "--precision), autocast smoked at it; without a suite, bf16 and fp16")
    p.set_defaults(fn=cmd_doctor)

    from .analysis.commands import register_commands

    register_commands(sub)
    return parser


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # what schedulers send before killing a job, handled as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.fn(args)
    except KDBenchError as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # outside a run (the manifest, a report): a full disk is the machine's failure too
        from .runner.runs import as_machine_error

        if not isinstance(as_machine_error(exc), MachineError):
            raise
        print(f"kdbench: error: {as_machine_error(exc)}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as exc:  # a value given on the command line, e.g. --lr -1
        problems = explain_validation(exc, line=lambda problem: f"{problem.key}: {problem.message}", separator="; ")
        print(f"kdbench: error: {exc.title}: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        command = " ".join(shlex.quote(a) for a in ["kdbench", *(sys.argv[1:] if argv is None else argv)])
        print("kdbench: interrupted; finished runs are kept and the others resume from their last epochs: "
              f"to go on, run {command}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
