"""A one-node Slurm cluster on localhost for the tests: munged, slurmctld and slurmd with
their own key, configuration, state and logs in one folder, one partition over this
machine's cores, no accounting database (``sacct`` answers "accounting storage is
disabled", as on a cluster without slurmdbd).

``LocalSlurm(folder).start()`` answers with the reason it cannot start (not root, Slurm or
munge not installed) or None once the node is idle; ``stop()`` cancels its jobs and ends
the daemons it started, by their process ids. Slurm holds a requeued job for two minutes
(its EligibleTime; ``scontrol requeue`` or submitit's own after a time limit's signal);
the cluster releases such a job at once (``scontrol update StartTime=now``, as an
administrator may), so that the tests wait for kdbench, not for that delay. Commands find it through ``SLURM_CONF``
(``environment``). Run by hand: ``python tests/slurm_cluster.py <folder>`` starts one and
stops it on Enter.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class LocalSlurm:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.socket = self.folder / "munge" / "munge.socket"
        self.host = socket.gethostname().split(".")[0]
        self.started: dict[str, int] = {}  # daemon → pid
        self.stopping = threading.Event()
        self.releaser = threading.Thread(target=self._release_requeued, daemon=True)

    @property
    def environment(self) -> dict[str, str]:
        """What a Slurm command needs to find this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> str | None:
        """Start the daemons; None once the node takes jobs, else why it cannot start."""
        from shutil import which

        missing = [name for name in (*DAEMONS, *COMMANDS) if which(name) is None]
        if missing:
            return f"Slurm is not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
        if os.geteuid() != 0:
            return "starting slurmd needs root (it runs the jobs as their users)"
        for sub in ("munge", "state", "spool", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        (self.folder / "munge").chmod(0o755)  # munged wants its socket's folder open to all
        key = self.folder / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.conf.write_text(self._config())
        munged = ["munged", "--force", f"--socket={self.socket}", f"--key-file={key}",
                  f"--log-file={self.folder / 'log' / 'munged.log'}", f"--pid-file={self.folder / 'munged.pid'}",
                  f"--seed-file={self.folder / 'munged.seed'}"]
        for name, command in (("munged", munged), ("slurmctld", ["slurmctld", "-f", str(self.conf), "-i"]),
                              ("slurmd", ["slurmd", "-f", str(self.conf)])):
            result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.environment})
            pid_file = self.folder / f"{name}.pid"
            deadline = time.time() + 10
            while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
                time.sleep(0.1)
            if result.returncode != 0 or not pid_file.exists():
                self.stop()
                return f"{name} did not start ({result.returncode}): {result.stderr.strip()} {self._log(name)}"
            self.started[name] = int(pid_file.read_text())
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                self.releaser.start()
                return None
            time.sleep(0.5)
        self.stop()
        return f"the node did not become idle within {timeout:.0f} s (sinfo: {state!r}): {self._log('slurmd')}"

    def run(self, *command: str) -> subprocess.CompletedProcess:
        """A Slurm command against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.environment})

    def jobs(self) -> dict[str, str]:
        """Job id → state, for the jobs slurmctld still knows (``MinJobAge`` keeps ended ones)."""
        lines = self.run("squeue", "-h", "-t", "all", "-o", "%i %T").stdout.split("\n")
        return dict(line.split() for line in lines if line.strip())

    def stop(self) -> None:
        """Cancel every job, then end the daemons this started (slurmd first)."""
        self.stopping.set()
        if self.releaser.is_alive():
            self.releaser.join()
        if "slurmctld" in self.started:
            self.run("scancel", "--full", "--user", str(os.getuid()))
            deadline = time.time() + 30
            while time.time() < deadline and any(s in ("RUNNING", "COMPLETING") for s in self.jobs().values()):
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            pid = self.started.pop(name, None)
            if pid is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 15
            while time.time() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _release_requeued(self) -> None:
        """Let a requeued job start at once rather than two minutes later."""
        while not self.stopping.wait(0.5):
            listed = self.run("squeue", "-h", "-t", "PENDING", "-o", "%i %r").stdout.split("\n")
            for job in [line.split()[0] for line in listed if line.strip().endswith(" BeginTime")]:
                self.run("scontrol", "update", f"jobid={job}", "StartTime=now")

    def _config(self) -> str:
        controller, node = _free_port(), _free_port()
        folder = self.folder
        return f"""\
ClusterName=kdbench-tests
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={controller}
SlurmdPort={node}
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder / 'state'}
SlurmdSpoolDir={folder / 'spool'}
SlurmctldPidFile={folder / 'slurmctld.pid'}
SlurmdPidFile={folder / 'slurmd.pid'}
SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}
SlurmdLogFile={folder / 'log' / 'slurmd.log'}
# no cgroups: the tests may run in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# a requeued or timed-out job's processes get 5 s between SIGTERM and SIGKILL (default 30)
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
# two one-core jobs at a time on any machine, so that the tests' jobs queue
PartitionName=tests Nodes={self.host} Default=YES MaxTime=INFINITE MaxCPUsPerNode=2 State=UP
"""

    def _log(self, name: str) -> str:
        log = self.folder / "log" / f"{name}.log"
        return f"(last lines of {log}: {' | '.join(log.read_text().splitlines()[-5:])})" if log.exists() else ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    import sys

    cluster = LocalSlurm(Path(sys.argv[1]))
    reason = cluster.start()
    if reason:
        sys.exit(reason)
    input(f"export SLURM_CONF={cluster.conf}  (Enter stops the cluster) ")
    cluster.stop()
