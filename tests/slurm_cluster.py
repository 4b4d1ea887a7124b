"""A real Slurm cluster on this machine for the tests: munged, slurmctld and slurmd from
Debian's packages (`.ci/run` installs them), configured in a scratch directory, on free ports,
stopped afterwards. One node named after this host; or (`NetnsNodes`) two nodes, each slurmd
in a network namespace of its own with its own address on a bridge that only these namespaces
and this host share. Nothing about Slurm is simulated: jobs go through `sbatch`, states are
read with `scontrol` (there is no accounting daemon, so no `sacct`)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from massive_mt.launch import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    addr: Optional[str] = None          # NodeAddr (None: the name resolves)
    netns: Optional[str] = None         # network namespace its slurmd runs in (None: this host's)


class NetnsNodes:
    """Two or more "hosts" on one machine: network namespaces NAME-1.. with addresses
    SUBNET.2.. on a bridge whose host side is SUBNET.1 (slurmctld's address), and
    /etc/netns/NS/hosts naming them all (`ip netns exec` mounts it over /etc/hosts, so the
    node names resolve inside every namespace). The namespaces have no other route."""

    def __init__(self, prefix: str = "mmt", n: int = 2, subnet: str = "10.213.7", cpus: int = 1):
        self.prefix, self.subnet = prefix, subnet
        self.bridge = f"{prefix}br0"
        self.host_addr = f"{subnet}.1"
        self.nodes = [Node(f"{prefix}node{i}", cpus, f"{subnet}.{i + 1}", f"{prefix}-node{i}") for i in range(1, n + 1)]
        self.interface = "eth1"         # the node side of each veth pair, in its namespace

    def create(self) -> None:
        self.destroy()                  # leftovers of an interrupted run
        run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, text=True)
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{n.addr} {n.name}\n" for n in self.nodes)
        for i, node in enumerate(self.nodes, 1):
            host_if = f"{self.prefix}veth{i}"
            run("ip", "netns", "add", node.netns)
            run("ip", "link", "add", host_if, "type", "veth", "peer", "name", self.interface, "netns", node.netns)
            run("ip", "link", "set", host_if, "master", self.bridge)
            run("ip", "link", "set", host_if, "up")
            for cmd in (["ip", "addr", "add", f"{node.addr}/24", "dev", self.interface],
                        ["ip", "link", "set", self.interface, "up"], ["ip", "link", "set", "lo", "up"]):
                run("ip", "netns", "exec", node.netns, *cmd)
            etc = Path("/etc/netns", node.netns)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)

    def destroy(self) -> None:
        for i, node in enumerate(self.nodes, 1):
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"{self.prefix}veth{i}"], capture_output=True)
            shutil.rmtree(Path("/etc/netns", node.netns), ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        try:
            Path("/etc/netns").rmdir()          # only when no other namespace keeps files there
        except OSError:
            pass


class SlurmCluster:
    """slurmctld + one slurmd per node (default: one node named after this host, `cpus` CPUs), in `root`."""

    def __init__(self, root: Path, cpus: int = 2, nodes: Optional[list[Node]] = None,
                 ctld_addr: Optional[str] = None):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.nodes = nodes or [Node(self.host, cpus)]
        self.ctld_addr = ctld_addr
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.started_munged = False

    # ------------------------------------------------------------------ start / stop
    def start(self, timeout: float = 60) -> None:
        self._start_munged()
        for d in ("state", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        nodes = [f"NodeName={n.name}" + (f" NodeAddr={n.addr}" if n.addr else "")
                 + f" CPUs={n.cpus} RealMemory=4000 State=UNKNOWN" for n in self.nodes]
        self.conf.write_text("\n".join([
            "ClusterName=massivemt-test",
            f"SlurmctldHost={self.host}" + (f"({self.ctld_addr})" if self.ctld_addr else ""),
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CryptoType=crypto/munge",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool-%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log", f"SlurmdLogFile={r}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "MpiDefault=none", "ReturnToService=2", "JobRequeue=1",
            "MinJobAge=3600",                    # keep finished jobs visible to `scontrol show job`
            "KillWait=10", "SlurmctldTimeout=30", "SlurmdTimeout=30",
            # a requeued job waits cred_expire seconds (default 120) before it may start again, and
            # pending jobs are looked at every sched_interval (default 60): shortened for the tests
            "AuthInfo=cred_expire=10", "SchedulerParameters=sched_interval=2,bf_interval=2",
            *nodes,
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
            ""]))
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf)], env=self.env, check=True,
                       capture_output=True, text=True)
        for n in self.nodes:
            (r / f"spool-{n.name}").mkdir(exist_ok=True)
            slurmd = [_sbin("slurmd"), "-f", str(self.conf), "-N", n.name]
            if n.netns:
                # into the node's network namespace, with a mount namespace of its own in which
                # /etc/netns/NS/hosts is /etc/hosts (`ip netns exec` would also remount /sys,
                # hiding the cgroup file system slurmd needs)
                slurmd = ["nsenter", f"--net=/run/netns/{n.netns}", "unshare", "--mount", "sh", "-c",
                          f'mount --bind /etc/netns/{n.netns}/hosts /etc/hosts && exec "$@"', "-", *slurmd]
            p = subprocess.run(slurmd, env=self.env, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(slurmd)} exited {p.returncode}: {p.stderr}\n{self.logs()}")
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            p = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = p.stdout.strip() + p.stderr.strip()
            if p.returncode == 0 and set(state.split()) <= {"idle", "mixed", "allocated"} \
                    and len(state.split()) == len(self.nodes):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Slurm nodes did not become idle within {timeout:.0f} s (sinfo: {state!r})\n"
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
        pidfiles = [self.root / f"slurmd-{n.name}.pid" for n in self.nodes] + [self.root / "slurmctld.pid"]
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
        for f in sorted((self.root / "log").glob("*.log")):
            out.append(f"--- {f.name} (last {lines} lines)\n" + "\n".join(f.read_text().splitlines()[-lines:]))
        return "\n".join(out)
