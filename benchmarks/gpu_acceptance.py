"""Every CUDA path of kdbench in one call, for a GPU lent for minutes: the steps of
``gpu_acceptance.sh`` (which installs what the machine lacks, then runs this).

    python benchmarks/gpu_acceptance.py OUT [--cpu] [--budget SECONDS]

Steps, each a subprocess with its own time limit and log file in OUT/logs/:

1. ``kdbench doctor suites/quick.yaml``: the machine, the suite's inputs, every fast path
   (autocast, channels-last, the device-held set, a 224-px prepared store through
   BatchResizedCrop, torch.compile with inductor, stacked students, a two-process step);
2. the offline suite (suites/quick.yaml, its first seed) with the engine's defaults on the
   device (channels-last, the device-held set), in bf16;
3. ``kdbench bench`` (a) to (d) on the device: every method's step, the cohort and stacked
   cohort, the data paths (224-px prepared store cropped on the device among them), the
   harness's overhead;
4. (GPU only) ``kdbench bench`` (a) again in fp32 for five methods: set against step 3's
   bf16 step times, what training in fp32 (every reference's precision) costs;
5. ``torchrun --nproc_per_node 2``: a teacher and its KD student trained data-parallel by
   two processes on the one GPU (gloo: NCCL refuses two ranks on one device).

OUT/summary.json holds each step's command, exit status, seconds, log and what it
measured (the doctor's checks, bench's figures, the suite's outcome), and the device.
``--cpu``: the same steps on the CPU with tiny settings (the suite as a smoke run of its
teachers and KD's first seed, two methods in bench without its 224-px case, the GPU fast
paths forced onto the CPU, compile through aot_eager), so a test keeps the script working
(tests/test_doctor.py).
A step that fails does not stop the others; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KDBENCH = [sys.executable, "-m", "kdbench.cli"]


def steps(out: Path, cpu: bool) -> list[dict]:
    """(name, command, seconds allowed) of each step; the GPU form fits 8 minutes on an H100."""
    results = out / "results"
    device = "cpu" if cpu else "cuda"
    # the suites' recipes train in fp32 by default: bf16 takes (and checks) the autocast path
    doctor = [*KDBENCH, "doctor", "suites/quick.yaml", "--out", str(results), "--device", device,
              "--json", str(out / "doctor.json"), "--precision", "bf16"]
    suite = [*KDBENCH, "run", "suites/quick.yaml", "--out", str(results), "--device", device, "--no-report"]
    bench_args = dict(device_name=device, steps=20, rounds=5)
    train = ["--nproc_per_node", "2", "-m", "kdbench.cli", "train", "--dataset", "digits", "--data-option",
             "image_size=16", "--teacher", "resnet20", "--student", "resnet8", "--method", "kd", "--device", device,
             "--out", str(out / "torchrun"), "--quiet"]
    if cpu:
        # the two-process path is the torchrun step's here
        doctor += ["--paths-on-cpu", "--compile-backend", "aot_eager", "--no-estimate", "--skip", "two-process step"]
        suite += ["--smoke", "--only", "method=kd", "--only", "seed=0", "--workers", "1"]
        bench_args = dict(device_name=device, teacher_name="resnet20", student_name="resnet8", batch_size=4,
                          image_size=16, num_classes=10, methods=["kd", "fitnet"], steps=1, rounds=1,
                          large_images=0)  # the 224-px store's batch crop is the doctor's here
        train += ["--epochs", "1", "--batch-size", "64"]
    else:  # its first seed (the teacher, 30 epochs, then three students, 15 epochs): all three would not fit the 8 minutes
        suite += ["--precision", "bf16", "--only", "seed=0"]
        bench_args["precision"] = "bf16"
        train += ["--epochs", "2"]
    bench = [sys.executable, "-c", "import json, sys; from kdbench.tools.bench import run_bench; "
             f"json.dump(run_bench(**{bench_args!r}), open(sys.argv[1], 'w'), default=str)", str(out / "bench.json")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", *train]
    if cpu:
        return [{"name": name, "command": command, "limit": 600}  # a shared machine may crawl
                for name, command in zip(("doctor", "quick suite", "bench a-d", "torchrun 2 processes"),
                                         (doctor, suite, bench, torchrun))]
    # what fp32, every reference's precision, costs against bf16: (a) again at fp32, same methods
    fp32 = [*KDBENCH, "bench", "--device", device, "--through", "a", "--rounds", "3", "--steps", "20",
            "--precision", "fp32", "--methods", "kd", "dkd", "figkd", "crd", "reviewkd"]
    return [{"name": name, "command": command, "limit": limit} for name, command, limit in
            zip(("doctor", "quick suite", "bench a-d", "bench a fp32", "torchrun 2 processes"),
                (doctor, suite, bench, fp32, torchrun), (120, 170, 110, 30, 50))]


def run_step(step: dict, logs: Path, budget_end: float) -> dict:
    """Run one step in the repository root; its result for the summary."""
    log = logs / f"{step['name'].replace(' ', '_')}.log"
    limit = max(1.0, min(step["limit"], budget_end - time.monotonic()))
    start = time.monotonic()
    with log.open("w") as f:
        f.write("$ " + " ".join(step["command"]) + "\n")
        f.flush()
        try:
            rc = subprocess.run(step["command"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        except subprocess.TimeoutExpired:
            rc = None
    seconds = time.monotonic() - start
    status = "PASS" if rc == 0 else ("TIMEOUT" if rc is None else "FAIL")
    tail = log.read_text(errors="replace").splitlines()[-3:]
    print(f"{status:<7} {step['name']:<22} {seconds:6.1f} s  {log}" + ("" if rc == 0 else "\n    " + "\n    ".join(tail)),
          flush=True)
    return {"name": step["name"], "command": step["command"], "status": status, "rc": rc, "seconds": seconds,
            "limit": limit, "log": str(log)}


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for summary.json, logs/ and the runs' results")
    parser.add_argument("--cpu", action="store_true", help="the short CPU form (tests)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all the steps together")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    shutil.rmtree(out / "results", ignore_errors=True)  # every run trains afresh: the point is to run the paths
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cpu" if args.cpu else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
    print(f"kdbench GPU acceptance ({'CPU form' if args.cpu else device}) into {out}", flush=True)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device here: run with --cpu for the CPU form", file=sys.stderr)
        return 2
    start = time.monotonic()
    results = [run_step(step, logs, start + args.budget) for step in steps(out, args.cpu)]
    summary = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_form": args.cpu,
               "seconds": time.monotonic() - start, "steps": results,
               "doctor": read_json(out / "doctor.json"), "bench": read_json(out / "bench.json"),
               "ok": all(r["status"] == "PASS" for r in results)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{'all passed' if summary['ok'] else 'FAILED'} in {summary['seconds']:.0f} s: {out / 'summary.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
