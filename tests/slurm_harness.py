"""A real two-node SLURM cluster on this one machine, for testing the project's SLURM batch scripts.

Usage (root, Debian/Ubuntu with apt; nothing is mocked):

    from tests.slurm_harness import LocalSlurm, ensure_slurm_installed

    reason = ensure_slurm_installed()          # None, or why SLURM cannot be had
    if reason:
        pytest.skip(reason)
    with LocalSlurm(tmp_path / "slurm") as cluster:
        job = cluster.sbatch(["job.sh"], cwd=tmp_path)         # env=cluster.env is passed for you
        assert cluster.wait(job, timeout=120) == "COMPLETED", cluster.diagnostics(job)
        cluster.job_info(job)                                  # {"JobState":..., "Restarts":..., "ExitCode":...}
        cluster.signal_batch(job, "USR1")                      # scancel --signal=USR1 --batch
        subprocess.run(["squeue"], env=cluster.env)            # any other SLURM command: use cluster.env

The cluster: slurmctld plus one slurmd per node ("localnode1", "localnode2", both 127.0.0.1, own ports), one
default partition "local" holding both (MaxTime=UNLIMITED), auth/none + cred/none (no munge), no accounting,
JobRequeue=1, AuthInfo=cred_expire=10 and bf/sched_interval=5 so a requeued job restarts in ~11 s instead of ~120 s.
Each node declares all of the machine's CPUs (the nodes overcommit the same cores), so `--nodes=2
--ntasks-per-node=1` (or up to os.cpu_count() tasks per node) fits. State, spool, pid and log files live under
`workdir` (spool sockets under a short /tmp folder when `workdir` is long). `127.0.0.1 localnode1 localnode2` is
added to /etc/hosts while the cluster runs (torch's c10d rendezvous must resolve the node names). On exit: every
job is cancelled, the daemons are stopped by their pid files, any process left with this cluster's SLURM_CONF in
its environment (slurmstepd, job tasks) is killed, and /etc/hosts is restored.

Inside a job: SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NODEID as usual, SLURMD_NODENAME=localnodeI while
`hostname` prints the machine's own host name for every task, and
`MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)` gives localnode1. On loopback set
GLOO_SOCKET_IFNAME=lo. Two clusters at once on one machine are not supported (shared /etc/hosts line).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")
NODE_NAMES = ("localnode1", "localnode2")
HOSTS_FILE = Path("/etc/hosts")
HOSTS_LINE = "127.0.0.1 " + " ".join(NODE_NAMES)
TERMINAL_STATES = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
)
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def ensure_slurm_installed(timeout: float = 600) -> str | None:
    """Install slurmctld/slurmd/slurm-client with apt unless they are already there.

    Returns None when SLURM is usable, else a one-line reason (for pytest.skip). Daemons are not started by the
    install: a /usr/sbin/policy-rc.d that exits 101 is put in place for it when none exists (and removed after).
    """
    if all(_which(b) for b in ("slurmctld", "slurmd", "sbatch")):
        return None
    if os.name != "posix" or os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if not _which("apt-get"):
        return "SLURM is not installed and there is no apt-get to install it"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    deadline = time.monotonic() + timeout
    try:
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created_policy = True
        commands = [
            ["apt-get", "update"],
            [
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=120",
                "slurmctld",
                "slurmd",
                "slurm-client",
            ],
        ]
        for cmd in commands:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"installing SLURM timed out after {timeout:.0f} s"
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                return f"installing SLURM timed out after {timeout:.0f} s ({' '.join(cmd[:2])})"
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                return f"`{' '.join(cmd[:2])}` failed (rc {proc.returncode}): {tail[-1] if tail else ''}"
    except OSError as e:
        return f"installing SLURM failed: {e}"
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in ("slurmctld", "slurmd", "sbatch") if not _which(b)]
    if missing:
        return f"SLURM installed but {', '.join(missing)} not found"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _mem_total_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 1024


def _proc_comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _proc_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<{e}>"


def parse_scontrol_record(text: str) -> dict[str, str]:
    """`scontrol show ... -o` output (one record, `Key=Value ...`) as a dict; values may contain spaces."""
    out: dict[str, str] = {}
    for m in re.finditer(r"(?:^|\s)([A-Za-z][\w:/.-]*)=(.*?)(?=\s+[A-Za-z][\w:/.-]*=|\s*$)", text.strip()):
        out.setdefault(m.group(1), m.group(2))
    return out


class LocalSlurm:
    """Context manager running slurmctld + one slurmd per node on localhost; see the module docstring."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        nodes: Iterable[str] = NODE_NAMES,
        cpus_per_node: int | None = None,
        start_timeout: float = 60.0,
        extra_conf: str = "",
    ):
        self.workdir = Path(workdir).resolve()
        self.nodes = tuple(nodes)
        if set(self.nodes) - set(NODE_NAMES):
            raise ValueError(f"nodes must be among {NODE_NAMES} (those are the names put in /etc/hosts)")
        self.cpus_per_node = cpus_per_node or os.cpu_count() or 1
        self.start_timeout = start_timeout
        self.extra_conf = extra_conf
        self.conf = self.workdir / "slurm.conf"
        self.log_dir = self.workdir / "log"
        self.run_dir = self.workdir / "run"
        self.state_dir = self.workdir / "state"
        self._short_spool: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._out_files: list = []
        self._hosts_added = False
        self.running = False
        self.env: dict[str, str] = {}

    # ----------------------------------------------------------------- paths
    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    def slurmd_log(self, node: str) -> Path:
        return self.log_dir / f"slurmd-{node}.log"

    @property
    def log_files(self) -> list[Path]:
        files = [self.slurmctld_log] + [self.slurmd_log(n) for n in self.nodes]
        return files + sorted(self.log_dir.glob("*.out"))

    def _pid_file(self, daemon: str) -> Path:
        return self.run_dir / (f"{daemon}.pid" if daemon == "slurmctld" else f"slurmd-{daemon}.pid")

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = [b for b in SLURM_BINARIES if not _which(b)]
        if missing:
            raise RuntimeError(f"SLURM binaries not found: {missing} (call ensure_slurm_installed() first)")
        for d in (self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)  # a fresh controller: no jobs recovered
        self.state_dir.mkdir(parents=True)
        spool_root = self.workdir / "spool"
        # slurmstepd binds unix sockets <spool>/<node>_<job>.<step> (108-byte limit): keep that path short
        if len(str(spool_root)) > 48:
            self._short_spool = Path(tempfile.mkdtemp(prefix="lslurm-", dir="/tmp"))
            spool_root = self._short_spool
        for n in self.nodes:
            (spool_root / n).mkdir(parents=True, exist_ok=True)
        self._write_conf(spool_root)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        self.env["SLURM_CONF"] = str(self.conf)
        self.env["PATH"] = _SEARCH_PATH
        self._add_hosts_line()
        self.running = True

        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(self._ctld_up, "slurmctld to answer `scontrol ping`")
        for n in self.nodes:
            self._spawn(n, [_which("slurmd"), "-D", "-N", n, "-f", str(self.conf)])
        self._wait_for(self._nodes_idle, f"sinfo to show {', '.join(self.nodes)} idle")

    def _write_conf(self, spool_root: Path) -> None:
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        host = socket.gethostname().split(".")[0]
        mem = max(1, int(_mem_total_mb() * 0.9))
        lines = [
            "ClusterName=adeptlocal",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "AuthInfo=cred_expire=10",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={spool_root}/%n",
            f"SlurmctldPidFile={self._pid_file('slurmctld')}",
            f"SlurmdPidFile={self.run_dir}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "JobRequeue=1",
            "SchedulerParameters=bf_interval=5,sched_interval=5",
            "SlurmdParameters=config_overrides",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=600",
            "SlurmdTimeout=300",
        ]
        for n, port in zip(self.nodes, node_ports):
            lines.append(
                f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={n} Port={port} "
                f"CPUs={self.cpus_per_node} RealMemory={mem} State=UNKNOWN"
            )
        lines.append(f"PartitionName=local Nodes={','.join(self.nodes)} Default=YES MaxTime=UNLIMITED State=UP")
        if self.extra_conf:
            lines.append(self.extra_conf.strip())
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.log_dir / f"{'slurmctld' if name == 'slurmctld' else 'slurmd-' + name}.out", "ab")
        self._out_files.append(out)
        self._procs[name] = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            dead = {n: p.returncode for n, p in self._procs.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"SLURM daemon(s) exited while waiting for {what}: {dead}\n{self.diagnostics()}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {self.start_timeout:.0f} s waiting for {what}\n{self.diagnostics()}"
                )
            time.sleep(0.3)

    def _ctld_up(self) -> bool:
        r = self._cmd(["scontrol", "ping"], check=False)
        return r.returncode == 0 and "UP" in r.stdout

    def node_states(self) -> dict[str, str]:
        r = self._cmd(["sinfo", "-h", "-N", "-o", "%N %T"], check=False)
        return dict(line.split(None, 1) for line in r.stdout.splitlines() if len(line.split(None, 1)) == 2)

    def _nodes_idle(self) -> bool:
        states = self.node_states()
        return all(states.get(n) == "idle" for n in self.nodes)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, kill leftovers, restore /etc/hosts. Safe to call more than once."""
        if self.running and "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            self._cancel_all()
        for name in [n for n in self._procs if n != "slurmctld"] + ["slurmctld"]:
            if name in self._procs:
                self._stop_daemon(name)
        self._kill_leftovers()
        for f in self._out_files:
            f.close()
        self._out_files.clear()
        self._procs.clear()
        self._remove_hosts_line()
        if self._short_spool is not None:
            shutil.rmtree(self._short_spool, ignore_errors=True)
            self._short_spool = None
        self.running = False

    def _cancel_all(self, timeout: float = 30) -> None:
        self._cmd(["scancel", "--full", "--user", "root"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self._cmd(["squeue", "-h", "-o", "%A %T"], check=False)
            if r.returncode != 0 or not r.stdout.strip():
                return
            time.sleep(0.5)

    def _stop_daemon(self, name: str, timeout: float = 15) -> None:
        comm = "slurmctld" if name == "slurmctld" else "slurmd"
        proc = self._procs[name]
        pids = {proc.pid}
        try:
            pids.add(int(self._pid_file(name).read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        pids = {p for p in pids if _proc_comm(p) == comm}
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (proc.poll() is None or any(_proc_alive(p) for p in pids)):
            time.sleep(0.1)
        for p in pids:
            if _proc_alive(p) and _proc_comm(p) == comm:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._pid_file(name).unlink(missing_ok=True)

    def leftover_pids(self) -> list[int]:
        """Live processes (other than this one and its ancestors) whose environment has this SLURM_CONF."""
        needle = f"SLURM_CONF={self.conf}".encode() + b"\0"
        skip, p = set(), os.getpid()
        while p > 1 and p not in skip:
            skip.add(p)
            try:
                p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in skip:
                continue
            try:
                environ = (d / "environ").read_bytes() + b"\0"
            except OSError:
                continue
            if (b"\0" + needle) in (b"\0" + environ) and _proc_alive(int(d.name)):
                found.append(int(d.name))
        return found

    def _kill_leftovers(self, timeout: float = 10) -> None:
        if not self.env:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.leftover_pids()
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.2)

    # ----------------------------------------------------------------- /etc/hosts
    def _add_hosts_line(self) -> None:
        text = HOSTS_FILE.read_text()
        if HOSTS_LINE in (line.strip() for line in text.splitlines()):
            return  # already there (not ours): leave it alone on exit too
        HOSTS_FILE.write_text(text + ("" if text.endswith("\n") or not text else "\n") + HOSTS_LINE + "\n")
        self._hosts_added = True

    def _remove_hosts_line(self) -> None:
        if not self._hosts_added:
            return
        lines = HOSTS_FILE.read_text().splitlines(keepends=True)
        for i in range(len(lines) - 1, -1, -1):  # drop exactly one copy: the one we appended
            if lines[i].strip() == HOSTS_LINE:
                del lines[i]
                break
        HOSTS_FILE.write_text("".join(lines))
        self._hosts_added = False

    # ----------------------------------------------------------------- commands
    def _cmd(self, argv: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        except subprocess.TimeoutExpired as e:
            if check:
                raise RuntimeError(f"`{' '.join(argv)}` timed out after {timeout} s\n{self.diagnostics()}") from e
            return subprocess.CompletedProcess(argv, 124, "", "timeout")
        if check and r.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed (rc {r.returncode}): {r.stderr.strip()}")
        return r

    def sbatch(self, args: list[str], cwd: str | os.PathLike | None = None) -> int:
        """Submit `sbatch --parsable *args` (in `cwd`) with this cluster's environment; returns the job id."""
        r = self._cmd(["sbatch", "--parsable", *map(str, args)], check=False, cwd=cwd)
        m = re.match(r"\s*(\d+)", r.stdout) or re.search(r"Submitted batch job (\d+)", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"sbatch {args} failed (rc {r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
        return int(m.group(1))

    def job_info(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o ID` as a dict (JobState, Restarts, ExitCode, Reason, NodeList, BatchHost, ...)."""
        r = self._cmd(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if r.returncode != 0 or "JobId=" not in r.stdout:
            raise RuntimeError(f"scontrol show job {job_id} failed: {r.stderr.strip() or r.stdout.strip()}")
        return parse_scontrol_record(r.stdout.strip().splitlines()[0])

    def job_state(self, job_id: int) -> str:
        """PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ... (JobState of scontrol)."""
        return self.job_info(job_id)["JobState"]

    def restarts(self, job_id: int) -> int:
        return int(self.job_info(job_id).get("Restarts", "0"))

    def wait_until(
        self, job_id: int, predicate: Callable[[dict[str, str]], bool], timeout: float, poll: float = 0.5, what=""
    ) -> dict[str, str]:
        """Poll job_info(job_id) until predicate(info) is true; returns that info, TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while True:
            info = self.job_info(job_id)
            if predicate(info):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id}: timed out after {timeout:.0f} s waiting for {what or predicate}; "
                    f"JobState={info.get('JobState')} Reason={info.get('Reason')} Restarts={info.get('Restarts')}\n"
                    + self.diagnostics(job_id)
                )
            time.sleep(poll)

    def wait(self, job_id: int, timeout: float, states: Iterable[str] = TERMINAL_STATES, poll: float = 0.5) -> str:
        """Poll the job every `poll` s until its JobState is in `states`; returns it (TimeoutError otherwise)."""
        states = tuple(states)
        info = self.wait_until(job_id, lambda i: i.get("JobState") in states, timeout, poll, f"JobState in {states}")
        return info["JobState"]

    def wait_restarted(self, job_id: int, restarts: int = 1, timeout: float = 60) -> dict[str, str]:
        """Wait until the job has been requeued `restarts` times and is RUNNING again."""
        return self.wait_until(
            job_id,
            lambda i: int(i.get("Restarts", "0")) >= restarts and i.get("JobState") == "RUNNING",
            timeout,
            what=f"Restarts>={restarts} and RUNNING",
        )

    def signal_batch(self, job_id: int, sig: str = "USR1") -> None:
        """`scancel --signal=SIG --batch JOB`: signal the batch shell only (not srun's tasks)."""
        self._cmd(["scancel", f"--signal={sig}", "--batch", str(job_id)])

    def cancel(self, job_id: int) -> None:
        self._cmd(["scancel", str(job_id)])

    def diagnostics(self, job_id: int | None = None, lines: int = 30) -> str:
        """Log-file locations and tails (plus the job's record and node states), for failure messages."""
        parts = [f"SLURM_CONF={self.conf}"]
        if job_id is not None:
            r = self._cmd(["scontrol", "show", "job", str(job_id)], check=False, timeout=10)
            parts.append(f"--- scontrol show job {job_id}\n{r.stdout.strip() or r.stderr.strip()}")
        r = self._cmd(["sinfo", "-N", "-l"], check=False, timeout=10) if self.env else None
        if r is not None:
            parts.append(f"--- sinfo -N -l\n{r.stdout.strip() or r.stderr.strip()}")
        for f in self.log_files:
            if f.exists():
                parts.append(f"--- {f} (last {lines} lines)\n{_tail(f, lines)}")
        return "\n".join(parts)
