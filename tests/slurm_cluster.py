"""A real one-node Slurm cluster on this machine for the tests: munged, slurmctld and slurmd
from Debian's packages (`.ci/run` installs them), configured in a scratch directory, on free
ports, stopped afterwards. Nothing about Slurm is simulated: jobs go through `sbatch`, states
are read with `scontrol`/`squeue` (there is no accounting daemon, so no `sacct`)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from massive_mt.distributed import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """slurmctld + one slurmd named after this host, with `cpus` CPUs, in `root`."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.started_munged = False

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 60) -> None:
        self._start_munged()
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=massivemt-test",
            f"SlurmctldHost={self.host}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CryptoType=crypto/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "MpiDefault=none", "ReturnToService=2", "JobRequeue=1",
            "MinJobAge=3600",                    # keep finished jobs visible to `scontrol show job`
            "KillWait=10", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            # a requeued job waits cred_expire seconds (default 120) before it may start again, and
            # pending jobs are looked at every sched_interval (default 60): shortened for the tests
            "AuthInfo=cred_expire=10", "SchedulerParameters=sched_interval=2,bf_interval=2",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory=8000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
            ""]))
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf)], env=self.env, check=True,
                       capture_output=True, text=True)
        subprocess.run([_sbin("slurmd"), "-f", str(self.conf)], env=self.env, check=True,
                       capture_output=True, text=True)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = p.stdout.strip() + p.stderr.strip()
            if p.returncode == 0 and state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm node did not become idle within {timeout:.0f} s (sinfo: {state!r})\n"
                           + self.logs())

    def _start_munged(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return                                   # a munged is already serving this machine
        for d, mode in (("/etc/munge", 0o700), ("/run/munge", 0o755), ("/var/lib/munge", 0o700),
                        ("/var/log/munge", 0o700)):
            Path(d).mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
            shutil.chown(d, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            os.chmod(key, 0o400)
            shutil.chown(key, "munge", "munge")
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", _sbin("munged")], check=True)
        self.started_munged = True
        for _ in range(50):
            if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("munged started but `munge -n | unmunge` still fails")

    def stop(self) -> None:
        """Cancel what is left, then stop slurmd, slurmctld and (if this cluster started it) munged."""
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True)
        pidfiles = [self.root / "slurmd.pid", self.root / "slurmctld.pid"]
        if self.started_munged:
            pidfiles.append(Path("/run/munge/munged.pid"))
        for pf in pidfiles:
            try:
                pid = int(pf.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    # ------------------------------------------------------------------ jobs
    def sbatch(self, script: Path, *options: str, args: tuple[str, ...] = (), env: dict | None = None) -> int:
        """Submit `script` with sbatch `options` and script `args`; returns the job id."""
        cmd = ["sbatch", "--parsable", *options, str(script), *args]
        p = subprocess.run(cmd, env={**self.env, **(env or {})}, capture_output=True, text=True)
        if p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr}")
        return int(p.stdout.strip().split(";")[0])

    def job(self, job_id: int | str) -> dict:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
        p = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], env=self.env,
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise AssertionError(f"scontrol show job {job_id}: {p.stderr}")
        return dict(re.findall(r"(\w+)=(\S*)", p.stdout))

    def wait(self, job_id: int | str, timeout: float = 600, states=FINAL_STATES) -> dict:
        deadline = time.time() + timeout
        info = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        subprocess.run(["scancel", str(job_id)], env=self.env, capture_output=True)
        raise AssertionError(f"job {job_id} not finished after {timeout:.0f} s: {info}\n" + self.logs())

    def signal(self, job_id: int, sig: str, batch: bool = False) -> None:
        """`scancel --signal=SIG`: to the job steps, or (batch=True) to the batch shell only."""
        cmd = ["scancel", f"--signal={sig}", *(["--batch"] if batch else []), str(job_id)]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True)

    def logs(self, lines: int = 30) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            f = self.root / "log" / name
            if f.exists():
                out.append(f"--- {name} (last {lines} lines)\n" + "\n".join(f.read_text().splitlines()[-lines:]))
        return "\n".join(out)
