#!/usr/bin/env python3
"""The benchmark behind `bench/run` (issue 6). Python standard library only.

bench/run installs the tools and builds the binaries, then runs this. It
starts the simulator, viewgate, nginx (proxy_cache) and the static hyper
"ceiling" on loopback, drives them with wrk pinned to vCPU 0, and writes the
report (markdown, JSON, PNG). What is measured and how is written out in
`docs/benchmarks.md`, which this script generates; the notes there are the
ones in `NOTES` below.

Every process it starts is recorded and stopped at exit (and dies with this
script through PR_SET_PDEATHSIG); every load run is bounded in time.
"""

import argparse
import ctypes
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
LUA = os.path.join(BENCH, "lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

HIT_BODY = b'{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}'

# A run is "disturbed" when processes other than wrk and the measured ones
# used more than this many vCPUs on average while it ran.
DISTURBED_VCPU = 0.15
# The machine is "quiet" when less than this share of all vCPUs is busy.
QUIET_SHARE = 0.10

SERVERS = ("viewgate", "nginx", "ceiling")
PHASES = ("hit", "log", "tenants", "miss", "mix", "rss")
PLACEMENTS = {
    # name: (cpus the server may use, its worker count, description)
    "shared": (None, 2, "wrk on vCPU 0; server unpinned (both vCPUs, shares vCPU 0 with wrk)"),
    "confined": ("1", 1, "wrk on vCPU 0; server confined to vCPU 1 (cross-vCPU)"),
    "same": ("0", 1, "wrk and server both on vCPU 0 (same-vCPU; 1 connection only)"),
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PROCS = []  # every long-running process started, stopped at exit


def _die_with_parent():
    # If this script dies (even by SIGKILL), its servers get SIGTERM.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv, *, cpus=None, env=None, stdout=None, stderr=None, track=True):
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    full_env = dict(os.environ)
    full_env.pop("RUST_LOG", None)  # the config's log level must apply
    full_env.update(env or {})
    p = subprocess.Popen(
        argv,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.DEVNULL,
        env=full_env,
        preexec_fn=_die_with_parent,
        cwd=REPO,
    )
    if track:
        PROCS.append(p)
    return p


def stop(p, grace=10.0):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def stop_all():
    for p in reversed(list(PROCS)):
        try:
            stop(p)
        except Exception as e:  # keep stopping the others
            log(f"could not stop pid {p.pid}: {e}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20.0, errfile=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    detail = ""
    if errfile and os.path.exists(errfile):
        detail = "\n" + open(errfile, errors="replace").read()[-2000:]
    raise SystemExit(f"{what} did not start listening on port {port}{detail}")


def wait_line(path, pattern, proc, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        if os.path.exists(path):
            m = rx.search(open(path, errors="replace").read())
            if m:
                return m
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"{what} did not print /{pattern}/; its output:\n"
                     + (open(path, errors="replace").read()[-2000:] if os.path.exists(path) else ""))


def pid_ticks(pid):
    """utime + stime (fields 14 and 15 of /proc/PID/stat), clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # rest[0] is field 3
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def child_pids(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    out.append(int(d))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def thread_names(pid):
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            n = open(f"/proc/{pid}/task/{t}/comm").read().strip()
        except FileNotFoundError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def irq_time_accounted_apart():
    """True when the kernel charges interrupt time to no process (IRQ_TIME_ACCOUNTING).

    Without it (tick-based accounting), a tick that lands in a softirq is
    charged both to /proc/stat's softirq column and to the task it interrupted.
    """
    try:
        import gzip
        with gzip.open("/proc/config.gz", "rt") as f:
            return "CONFIG_IRQ_TIME_ACCOUNTING=y" in f.read()
    except OSError:
        return False


IRQ_APART = irq_time_accounted_apart()


def machine_jiffies():
    """Clock ticks over all vCPUs from /proc/stat: (busy, task, irq, steal, total).

    `task`: user + nice + system; `irq`: hard and soft interrupt time.
    """
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy, user + nice + system, irq + softirq, steal, busy + idle + iowait


class Server:
    """A started server: its process, URL, placement and how to read its CPU."""

    def __init__(self, name, kind, placement, proc, port, include_children=False):
        self.name, self.kind, self.placement = name, kind, placement
        self.proc, self.port = proc, port
        self.include_children = include_children  # nginx: master + workers
        self.url = f"http://127.0.0.1:{port}"

    def ticks(self):
        pids = [self.proc.pid]
        if self.include_children:
            pids += child_pids(self.proc.pid)
        snap = {}
        for p in pids:
            t = pid_ticks(p)
            if t is not None:
                snap[p] = t
        return snap

    @staticmethod
    def delta(before, after):
        return sum(after[p] - before.get(p, 0) for p in after)


def post(url, key, body=HIT_BODY, timeout=10):
    req = urllib.request.Request(url + "/v2/profiles", data=body, method="POST",
                                 headers={"content-type": "application/json", "x-api-key": key})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.rounds = 1 if self.quick else args.rounds
        self.duration = 2 if self.quick else args.duration
        self.warmup = 1  # wrk takes whole seconds
        self.quiet_wait_max = 5.0 if self.quick else 30.0
        self.quiet_budget = 15.0 if self.quick else 120.0
        self.rss_pages = 20_000 if self.quick else 100_000
        self.rss_max_bytes = (32 if self.quick else 128) * MIB
        self.tenant_counts = [10, 100, 1000, 10000]
        self.phases = set(args.only.split(",")) if args.only else set(PHASES)
        unknown = self.phases - set(PHASES)
        if unknown:
            raise SystemExit(f"--only: unknown phase(s) {', '.join(sorted(unknown))}; known: {', '.join(PHASES)}")
        self.repeat_budget = 5 if self.quick else 15
        self.vg_bin = args.viewgate
        self.viewgate_label = args.viewgate_label
        self.vg_built = datetime.fromtimestamp(os.path.getmtime(self.vg_bin), timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC")
        self.ceiling_bin = args.ceiling
        self.work = tempfile.mkdtemp(prefix="viewgate-bench.")
        self.out = args.out
        self.results = []  # every measured run
        self.offset_base = 1_000_000  # unique pages are allocated from here
        self.quiet_waited = 0.0
        self.facts = {}  # things the report states (thread counts, versions ...)
        log(f"work dir {self.work}; report to {self.out}")

    # ------------------------------------------------------------ helpers
    def path(self, *p):
        return os.path.join(self.work, *p)

    def next_base(self, span=20_000_000):
        b = self.offset_base
        self.offset_base += span
        if self.offset_base > 4_000_000_000:
            raise SystemExit("ran out of unique offsets")
        return b

    def wait_quiet(self):
        """Waits (bounded) until the machine is nearly idle; returns seconds waited."""
        if self.quiet_waited >= self.quiet_budget:
            return 0.0
        start = time.monotonic()
        limit = min(self.quiet_wait_max, self.quiet_budget - self.quiet_waited)
        samples = 0
        while True:
            b0, *_, t0 = machine_jiffies()
            time.sleep(0.4)
            b1, *_, t1 = machine_jiffies()
            samples += 1
            share = (b1 - b0) / max(1, t1 - t0)
            waited = time.monotonic() - start
            if share < QUIET_SHARE or waited >= limit:
                if samples == 1 and share < QUIET_SHARE:
                    return 0.0  # quiet at once: the sample is not a wait
                self.quiet_waited += waited
                return waited

    # ------------------------------------------------------------ starting
    def start_sim(self):
        self.sim_key = "simkey_" + secrets.token_hex(16)
        cfg = self.path("sim.yaml")
        with open(cfg, "w") as f:
            f.write("# upstream simulator for bench/run\n"
                    f"keys:\n  - {{name: bench, key: \"{self.sim_key}\", accounts: [\"*\"]}}\n"
                    "default_total: 4000000000   # room for millions of distinct non-empty pages\n")
        out = self.path("sim.out")
        p = spawn([self.vg_bin, "sim", "--listen", "127.0.0.1:0", "--config", cfg],
                  env={"RUST_LOG": "warn"}, stdout=open(out, "w"), stderr=subprocess.STDOUT)
        m = wait_line(out, r"listening on http://([0-9.]+):(\d+)", p, "simulator")
        self.sim = Server("sim", "sim", "shared", p, int(m.group(2)))
        log(f"simulator on {self.sim.url}")

    def keygen(self):
        out = subprocess.run([self.vg_bin, "keygen"], capture_output=True, text=True, check=True).stdout
        key = re.search(r"key:\s+(\S+)", out).group(1)
        sha = re.search(r"key_sha256:\s+([0-9a-f]{64})", out).group(1)
        return key, sha

    def viewgate_config(self, name, port, tenants, *, level="info", ledger="sqlite",
                        max_bytes=None, admin_port=None):
        d = self.path(name)
        os.makedirs(d, exist_ok=True)
        lines = [
            f"# generated by bench/run ({name})",
            "server:",
            f"  listen: \"127.0.0.1:{port}\"",
        ]
        if admin_port:
            lines += ["admin:", f"  listen: \"127.0.0.1:{admin_port}\""]
        lines += [
            "upstream:",
            f"  base_url: \"{self.sim.url}\"",
            "  keys:",
            "    - name: bench",
            "      api_key_env: LINKUP_API_KEY",
            "      accounts: [\"*\"]",
            "cache:",
            "  ttl_s: 3600",
        ]
        if max_bytes:
            lines.append(f"  max_bytes: {max_bytes}")
        lines.append("ledger:")
        if ledger == "sqlite":
            lines += ["  backend: sqlite", f"  path: \"{d}/ledger.db\""]
        else:
            lines += ["  backend: memory"]
        lines += ["log:", f"  level: {level}", "tenants:"]
        for tid, sha in tenants:
            # no rate limit, no budget: the benchmark measures the path, not the policy
            lines.append(f"  - {{id: \"{tid}\", key_sha256: \"{sha}\", accounts: [\"*\"]}}")
        cfg = os.path.join(d, "viewgate.yaml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return cfg

    def start_viewgate(self, name, placement, tenants, **kw):
        cpus, workers, _ = PLACEMENTS[placement]
        port = free_port()
        cfg = self.viewgate_config(name, port, tenants, **kw)
        err = self.path(name, "stderr.log")
        # The access log goes to a file, as an operator's would (nginx's too).
        p = spawn([self.vg_bin, "serve", "--config", cfg], cpus=cpus,
                  env={"LINKUP_API_KEY": self.sim_key, "TOKIO_WORKER_THREADS": str(workers)},
                  stdout=open(self.path(name, "access.log"), "w"), stderr=open(err, "w"))
        wait_port(port, p, f"viewgate {name}", timeout=60, errfile=err)
        return Server(name, "viewgate", placement, p, port)

    def start_nginx(self, name, placement):
        cpus, workers, _ = PLACEMENTS[placement]
        d = self.path(name)
        os.makedirs(os.path.join(d, "cache"), exist_ok=True)
        port = free_port()
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""# generated by bench/run ({name}, placement {placement})
{user}worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;     # combined format, to a file like viewgate's stdout
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;    # default 1000 would close wrk's connections
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=pages:64m max_size=4g inactive=2h use_temp_path=off;
    upstream sim {{
        server 127.0.0.1:{self.sim.port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_body_buffer_size 64k;   # the body stays in memory, so $request_body is set
        client_max_body_size 64k;
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-api-key "{self.sim_key}";
            proxy_cache pages;
            proxy_cache_methods POST;
            proxy_cache_key "$http_x_api_key$request_body";
            proxy_cache_valid 200 60m;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        err = os.path.join(d, "stderr.log")
        p = spawn(["nginx", "-p", d, "-c", path, "-e", f"{d}/error.log"], cpus=cpus,
                  stderr=open(err, "w"))
        wait_port(port, p, f"nginx {name}", errfile=err)
        return Server(name, "nginx", placement, p, port, include_children=True)

    def start_ceiling(self, name, placement):
        cpus, workers, _ = PLACEMENTS[placement]
        out = self.path(f"{name}.out")
        p = spawn([self.ceiling_bin, self.body_file, "127.0.0.1:0"], cpus=cpus,
                  env={"TOKIO_WORKER_THREADS": str(workers)}, stdout=open(out, "w"),
                  stderr=subprocess.STDOUT)
        m = wait_line(out, r"listening on [0-9.]+:(\d+)", p, f"ceiling {name}")
        return Server(name, "ceiling", placement, p, int(m.group(1)))

    # ------------------------------------------------------------ checks
    def warm(self, s, key):
        """One request fills the cache; the next must be a hit."""
        st, h, body = post(s.url, key)
        if st != 200:
            raise SystemExit(f"{s.name}: warm-up answered {st}: {body[:300]!r}")
        if s.kind == "ceiling":
            return body
        st, h, body = post(s.url, key)
        flag = h.get("x-cache") if s.kind == "viewgate" else h.get("x-cache-status")
        if st != 200 or flag != "HIT":
            raise SystemExit(f"{s.name}: second request was not a hit ({st}, {flag})")
        return body

    def sim_calls(self):
        with urllib.request.urlopen(self.sim.url + "/_sim/stats", timeout=10) as r:
            return json.loads(r.read())["calls_total"]

    # ------------------------------------------------------------ one run
    def wrk(self, url, script, script_args, conns, duration, env=None, timeout_extra=30):
        argv = ["taskset", "-c", "0", "wrk", "-t1", "-c", str(conns), "-d", f"{duration}s",
                "--latency", "--timeout", "5s", "-s", os.path.join(LUA, script), url, "--"]
        argv += [str(a) for a in script_args]
        out_path = self.path("wrk.out")
        with open(out_path, "w") as out:
            p = spawn(argv, env={"BENCH_LUA": LUA, **(env or {})}, stdout=out,
                      stderr=subprocess.STDOUT)
            deadline = time.monotonic() + duration + timeout_extra
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.02)
            p.returncode = os.waitstatus_to_exitcode(status)
            PROCS.remove(p)
        text = open(out_path).read()
        m = re.search(r"^BENCH (\{.*\})$", text, re.M)
        if p.returncode != 0 or not m:
            raise SystemExit(f"wrk failed ({p.returncode}):\n{text[-2000:]}")
        r = json.loads(m.group(1))
        r["wrk_cpu_s"] = ru.ru_utime + ru.ru_stime
        return r

    def measure(self, phase, cell, server, script, script_args, conns, *, also=(),
                duration=None, label=None, allow_repeat=True, env=None):
        """One bounded wrk run against `server`, with its CPU time and a disturbance check.

        `also`: other processes whose CPU is part of this run (the simulator on
        a miss), measured and reported separately, not counted as disturbance.
        """
        duration = duration or self.duration
        attempt = 0
        best = None
        while True:
            waited = self.wait_quiet()
            procs = [server] + list(also)
            before = [s.ticks() for s in procs]
            m0 = machine_jiffies()
            t0 = time.monotonic()
            w = self.wrk(server.url, script, script_args, conns, duration, env=env)
            elapsed = time.monotonic() - t0
            m1 = machine_jiffies()
            after = [s.ticks() for s in procs]
            ticks = [Server.delta(b, a) for b, a in zip(before, after)]
            task = m1[1] - m0[1]
            irq = m1[2] - m0[2]
            steal = m1[3] - m0[3]
            # Others = time the machine was busy that wrk and the measured
            # processes were not charged for (interrupt time only where the
            # kernel charges it to processes), steal included.
            charged = task + (0 if IRQ_APART else irq)
            other = charged + steal - sum(ticks) - w["wrk_cpu_s"] * CLK_TCK
            other_vcpu = max(0.0, other / CLK_TCK / elapsed)
            n = max(1, w["requests"])
            errors = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"]
            res = {
                "phase": phase, "cell": cell, "server": server.name, "kind": server.kind,
                "placement": server.placement, "conns": conns, "label": label or server.kind,
                "requests": w["requests"], "errors": errors,
                "rps": w["requests"] / (w["duration_us"] / 1e6),
                "p50_us": w["p50_us"], "p90_us": w["p90_us"], "p99_us": w["p99_us"],
                "p999_us": w["p999_us"], "mean_us": w["mean_us"],
                "cpu_us_per_req": ticks[0] / CLK_TCK / n * 1e6,
                "server_cpu_vcpu": ticks[0] / CLK_TCK / elapsed,
                "also_cpu_us_per_req": [t / CLK_TCK / n * 1e6 for t in ticks[1:]],
                "wrk_cpu_vcpu": w["wrk_cpu_s"] / elapsed,
                "other_vcpu": other_vcpu, "steal_vcpu": steal / CLK_TCK / elapsed,
                "irq_vcpu": irq / CLK_TCK / elapsed,
                "quiet_wait_s": waited, "attempt": attempt,
            }
            res["disturbed"] = other_vcpu > DISTURBED_VCPU
            if best is None or res["other_vcpu"] < best["other_vcpu"]:
                best = res
            if res["errors"]:
                log(f"  !! {errors} errors ({w['err_status']} non-2xx) in {phase}/{cell}/{server.name}")
            if res["disturbed"] and allow_repeat and attempt == 0 and self.repeat_budget > 0:
                attempt += 1
                self.repeat_budget -= 1
                log(f"  disturbed ({other_vcpu:.2f} vCPU used by others): repeating once")
                continue
            break
        best["repeated"] = attempt > 0
        self.results.append(best)
        log(f"  {phase:8} {cell:14} {server.name:14} {best['rps']:9.0f} req/s  p50 {best['p50_us']:5d} µs"
            f"  p99 {best['p99_us']:6d} µs  cpu {best['cpu_us_per_req']:6.1f} µs/req"
            f"  other {best['other_vcpu']:.2f}{'  DISTURBED' if best['disturbed'] else ''}")
        return best

    # ------------------------------------------------------------ the plan
    def run(self):
        t_start = time.monotonic()
        b0, *_, t0 = machine_jiffies()
        time.sleep(1)
        b1, *_, t1 = machine_jiffies()
        busy = (b1 - b0) / max(1, t1 - t0)
        if busy > 0.25:
            log(f"warning: the machine is {busy:.0%} busy before we start; disturbed runs will be flagged")
        self.start_sim()
        self.tenant_key, tenant_sha = self.keygen()
        main_tenants = [("bench", tenant_sha)]

        # The hit-path contestants, one per placement, all started up front
        # (idle ones cost nothing) so rounds can interleave A B C A B C.
        vg = {pl: self.start_viewgate(f"viewgate-{pl}", pl, main_tenants) for pl in PLACEMENTS}
        ng = {pl: self.start_nginx(f"nginx-{pl}", pl) for pl in PLACEMENTS}
        hit_body = None
        for pl in PLACEMENTS:
            hit_body = self.warm(vg[pl], self.tenant_key)
            self.warm(ng[pl], self.tenant_key)
        # The ceiling answers with the very bytes a viewgate hit returns.
        self.body_file = self.path("hit-body.json")
        with open(self.body_file, "wb") as f:
            f.write(hit_body)
        self.facts["hit_body_bytes"] = len(hit_body)
        ce = {pl: self.start_ceiling(f"ceiling-{pl}", pl) for pl in PLACEMENTS}
        for pl in PLACEMENTS:
            self.warm(ce[pl], self.tenant_key)
        self.facts["threads"] = {s.name: thread_names(s.proc.pid) for s in
                                 [vg["shared"], vg["confined"], ce["shared"], ce["confined"]]}
        self.facts["nginx_workers"] = {pl: sum("worker process" in cmdline(p) for p in child_pids(ng[pl].proc.pid))
                                       for pl in PLACEMENTS}

        # Secondary contestants, for the phases asked for.
        phases = self.phases
        vg_logoff = vg_miss = vg_miss_mem = None
        if "log" in phases:
            vg_logoff = self.start_viewgate("viewgate-logoff", "shared", main_tenants, level="warn")
            self.warm(vg_logoff, self.tenant_key)
        if "miss" in phases or "mix" in phases:
            vg_miss = self.start_viewgate("viewgate-miss", "shared", main_tenants)
            self.warm(vg_miss, self.tenant_key)
        if "miss" in phases:
            vg_miss_mem = self.start_viewgate("viewgate-miss-memledger", "shared", main_tenants,
                                              ledger="memory")
            self.warm(vg_miss_mem, self.tenant_key)
        prefix = "vgb_" + secrets.token_hex(8) + "_"
        vg_t = {}
        if "tenants" in phases:
            for n in self.tenant_counts:
                tenants = [(f"t{i}", hashlib.sha256(f"{prefix}{i}".encode()).hexdigest())
                           for i in range(1, n + 1)]
                vg_t[n] = self.start_viewgate(f"viewgate-tenants-{n}", "shared", tenants)
                self.warm(vg_t[n], f"{prefix}1")

        # One short unrecorded load per server, so no measured run is the first.
        log("warm-up loads")
        for s in list(vg.values()) + list(ng.values()) + list(ce.values()) + [x for x in [vg_logoff] if x]:
            self.wrk(s.url, "hit.lua", [self.tenant_key], 64, self.warmup)
        for n, s in vg_t.items():
            self.wrk(s.url, "tenants.lua", [n, prefix], 64, self.warmup)

        hit_runs_upstream_calls = 0
        for rnd in range(1, self.rounds + 1):
            log(f"round {rnd}/{self.rounds}")
            # Zero the simulator's counters (its per-page table grows with every miss).
            urllib.request.urlopen(urllib.request.Request(self.sim.url + "/_sim/reset", method="POST"),
                                   timeout=10).read()
            # Item 1: the hit path, A B C per cell.
            if "hit" in phases:
                for pl in ("shared", "confined"):
                    for conns in (1, 64):
                        for group in (vg, ng, ce):
                            self.measure("hit", f"{pl}/{conns}", group[pl], "hit.lua", [self.tenant_key], conns)
                for group in (vg, ng, ce):
                    self.measure("hit", "same/1", group["same"], "hit.lua", [self.tenant_key], 1)
            # Item 2: access log on vs off.
            if "log" in phases:
                for s in (vg["shared"], vg_logoff):
                    self.measure("log", "shared/64", s, "hit.lua", [self.tenant_key], 64,
                                 label="log on" if s is vg["shared"] else "log off")
            # Item 2: tenants 10 -> 10,000.
            for n, s in vg_t.items():
                self.measure("tenants", "shared/64", s, "tenants.lua", [n, prefix], 64, label=str(n))
            # Every run so far was meant to be a hit: count what reached the upstream.
            hit_runs_upstream_calls += self.sim_calls()
            # Item 2: the miss path, unique pages, simulator latency 0.
            if "miss" in phases:
                for conns, contestants in ((1, (vg_miss, vg_miss_mem, self.sim)),
                                           (64, (vg_miss, vg_miss_mem, self.sim))):
                    for s in contestants:
                        direct = s is self.sim
                        label = ("simulator direct" if direct else
                                 "viewgate (memory ledger)" if s is vg_miss_mem else "viewgate (sqlite ledger)")
                        self.measure("miss", f"shared/{conns}", s, "unique.lua",
                                     [self.sim_key if direct else self.tenant_key, self.next_base()], conns,
                                     also=() if direct else (self.sim,), label=label)
            # Item 2: 90% hits.
            if "mix" in phases:
                for s in (vg_miss, ng["shared"]):
                    self.measure("mix", "shared/64", s, "mix.lua", [self.tenant_key, self.next_base()], 64,
                                 also=(self.sim,))
        self.facts["upstream_calls_during_hit_runs"] = hit_runs_upstream_calls

        # Item 2: memory with the cache full. Its own instance, stopped after.
        for s in [vg_logoff, vg_miss, vg_miss_mem] + list(vg_t.values()):
            if s:
                stop(s.proc)
        self.rss = self.measure_rss(main_tenants) if "rss" in phases else None
        self.facts["elapsed_s"] = time.monotonic() - t_start
        self.facts["quiet_waited_s"] = self.quiet_waited

    def measure_rss(self, tenants):
        admin = free_port()
        s = self.start_viewgate("viewgate-rss", "shared", tenants, max_bytes=self.rss_max_bytes,
                                admin_port=admin)
        self.warm(s, self.tenant_key)
        hwm0 = status_kib(s.proc.pid, "VmHWM")
        log(f"filling the cache with {self.rss_pages} distinct pages (max_bytes {self.rss_max_bytes // MIB} MiB)")
        # wrk cannot stop after N requests (a stopped thread still waits out -d),
        # so fill in 5 s loads of fresh pages until enough have been answered.
        t0 = time.monotonic()
        sent = errors = 0
        busy_s = 0.0
        while sent < self.rss_pages and time.monotonic() - t0 < (30 if self.quick else 120):
            w = self.wrk(s.url, "unique.lua", [self.tenant_key, self.next_base()], 64, 5)
            sent += w["requests"]
            busy_s += w["duration_us"] / 1e6
            errors += w["err_status"] + w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
        fill_s = time.monotonic() - t0
        time.sleep(2)  # let the cache finish its evictions
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read().decode()

        def gauge(name):
            m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", metrics, re.M)
            return float(m.group(1)) if m else None

        res = {
            "max_bytes": self.rss_max_bytes, "pages_requested": sent, "errors": errors,
            "fill_s": fill_s, "fill_rps": sent / max(1e-9, busy_s),
            "hwm_before_kib": hwm0, "hwm_kib": status_kib(s.proc.pid, "VmHWM"),
            "rss_kib": status_kib(s.proc.pid, "VmRSS"),
            "cache_entries": gauge("viewgate_cache_entries"), "cache_bytes": gauge("viewgate_cache_bytes"),
        }
        stop(s.proc)
        log(f"  peak RSS {res['hwm_kib'] / 1024:.1f} MiB, cache {res['cache_entries']} pages / "
            f"{(res['cache_bytes'] or 0) / MIB:.1f} MiB")
        return res


# ---------------------------------------------------------------- report


def usable(rows):
    """The undisturbed runs of a cell, or all of them if every one was disturbed."""
    clean = [r for r in rows if not r["disturbed"]]
    return clean or rows


def med(rows, key):
    vals = [r[key] for r in rows]
    return statistics.median(vals) if vals else float("nan")


def fmt_int(x):
    return f"{x:,.0f}"


def fmt(x, d=1):
    return f"{x:.{d}f}"


def ratio(a, b):
    return a / b if b else float("nan")


def tool_version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def machine_facts():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    virt = tool_version(["systemd-detect-virt"])
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(), "mem_mib": mem,
        "virt": virt, "commit": head, "dirty": bool(dirty),
        "wrk": tool_version(["wrk", "-v"]), "nginx": tool_version(["nginx", "-v"]),
        "rustc": tool_version(["rustc", "--version"]), "loadavg": open("/proc/loadavg").read().split()[0:3],
    }


NOTES = """\
- **Load generator**: wrk 4.1 (Debian), one thread (`-t1`), `taskset -c 0`, the README's
  `POST /v2/profiles` with `content-type: application/json`, an `x-api-key` tenant key and the
  body `{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}` (a
  count=10 page, about 3 KB). Lua scripts: `bench/lua/`. Latencies are wrk's (µs).
- **Placements**: *shared*: wrk on vCPU 0, the server unpinned (both vCPUs; viewgate and the
  ceiling run 2 tokio workers, nginx `worker_processes 2`; viewgate's serving threads are one
  per vCPU it may run on). *confined*: the server started under
  `taskset -c 1` with 1 worker (`TOKIO_WORKER_THREADS=1`, which tokio's
  `Builder::new_multi_thread()` honours: see the thread counts below; nginx
  `worker_processes 1`), wrk on vCPU 0, so every request crosses vCPUs. *same*: the server
  under `taskset -c 0` with wrk, 1 worker, 1 connection only: the target's "same-vCPU" p50.
- **Server CPU per request**: utime + stime (fields 14 and 15 of `/proc/PID/stat`, clock
  ticks of 1/CLK_TCK s) read before and after each run, divided by the requests wrk
  completed. viewgate and the ceiling: the whole process (all threads, incl. the ledger
  writer and log writes); nginx: master + every worker. Resolution: one tick (10 ms) per run.
  Loopback TCP's delivery runs in softirqs; with tick-based accounting (this kernel has no
  `CONFIG_IRQ_TIME_ACCOUNTING`; the script checks) a softirq tick is charged to whichever
  process it interrupted, so the figures include the kernel's network work roughly as it falls.
- **Logging on**: viewgate runs with `log: {level: info}` (one JSON access line per request)
  and stdout to a file in the work directory; nginx has `access_log` to a file there too
  (combined format, one write per request); the ceiling logs nothing. Only the "log off" row
  runs viewgate at `warn`.
- **viewgate**: `viewgate serve` with a generated config: one tenant whose key comes from
  `viewgate keygen`, no rate limit, no budget, SQLite ledger in the work directory,
  `cache.ttl_s: 3600` (pages stay fresh for the whole run), simulator as the upstream.
  The hit path does what a real hit does: key hash + lookup, JSON parse, policy, cache lookup,
  metadata rewrite, access log line, hit counters.
- **nginx**: generated config (`nginx.conf` in the work directory; `bench/run --keep` keeps it):
  `proxy_pass` to the simulator with `proxy_set_header x-api-key <simulator key>`,
  `proxy_cache_methods POST`, `proxy_cache_key "$http_x_api_key$request_body"`,
  `proxy_cache_valid 200 60m` (same freshness as viewgate's ttl, so no run sees an expiry),
  `proxy_cache_lock on`, `client_body_buffer_size 64k` (body in memory), `sendfile on`,
  `keepalive_requests 1000000` (the default 1000 would make wrk reconnect), an
  `X-Cache-Status` header. nginx does not authenticate the tenant key; it only keys on it.
- **Ceiling**: `bench/ceiling`, a minimal hyper 1 HTTP/1.1 server on tokio (versions pinned to
  viewgate's Cargo.lock) that reads the request body and answers 200 with the bytes a
  viewgate hit returned (saved at start-up) and `content-type: application/json`.
- **Rounds**: every cell runs once per round, servers interleaved (viewgate, nginx, ceiling,
  viewgate, ...); tables show the median over rounds. One unrecorded 64-connection warm-up
  load per server precedes the first round; every cache is filled and checked (a second
  request must say HIT) before that.
- **Quiet machine**: before each run the script samples `/proc/stat` and waits (up to 30 s,
  120 s in all) until less than 10% of the machine is busy. After each run it subtracts the
  CPU of wrk and of the measured processes from the machine's busy time (`/proc/stat`,
  steal included; interrupt time only if the kernel charges it to processes, see above);
  if others used more than 0.15 vCPU on average, the run is *disturbed*
  and is repeated once (at most 15 repeats per full run, so a busy machine cannot double its length);
  the less disturbed attempt is kept, and still flagged if both were.
- **Miss path**: every request asks for a page never asked before (offsets from a counter),
  the simulator answers at once (no injected latency). viewgate → simulator is compared with
  wrk → simulator directly (same body, the simulator's key); viewgate's added latency is the
  difference of p50 (and p99), its added CPU is its own CPU per request. A memory-ledger
  viewgate shows how much of the miss is the durable SQLite reserve + settle.
- **Memory**: a separate viewgate with `cache.max_bytes` as stated gets distinct pages (5 s wrk
  loads at 64 connections, repeated until the stated number of pages was answered: more pages
  than fit, so the cache is full and evicting); VmHWM (peak RSS) from `/proc/PID/status`, cache gauges from `/metrics`.
- **Tenants**: one viewgate per tenant count (10, 100, 1,000, 10,000 tenants in the config,
  keys minted by the script, sha256 by Python), wrk cycling through all N keys on the warm
  page; the requests are prebuilt in Lua so wrk's work is the same for every N.
"""


def build_report(b, mf):
    R = b.results
    L = []
    w = L.append

    def rows(phase, cell, server=None, label=None):
        return [r for r in R if r["phase"] == phase and r["cell"] == cell
                and (server is None or r["kind"] == server)
                and (label is None or r["label"] == label)]

    def cellstats(phase, cell, server=None, label=None):
        every = rows(phase, cell, server, label)
        if not every:
            return None
        rs = usable(every)
        return {k: med(rs, k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req", "wrk_cpu_vcpu",
                                        "server_cpu_vcpu")} | {
            "n": len(every), "disturbed": sum(r["disturbed"] for r in every),
            "d": f"{sum(r['disturbed'] for r in every)}/{len(every)}"
                 + ("" if any(not r["disturbed"] for r in every) else " !"),
            "clean": any(not r["disturbed"] for r in every),
            "repeated": sum(r["repeated"] for r in every), "errors": sum(r["errors"] for r in every),
            "also": [statistics.median(x) for x in zip(*[r["also_cpu_us_per_req"] for r in rs])]
            if rs[0]["also_cpu_us_per_req"] else []}

    disturbed = sum(r["disturbed"] for r in R)
    repeated = sum(r["repeated"] for r in R)
    other_med = statistics.median([r["other_vcpu"] for r in R]) if R else 0
    steal_med = statistics.median([r["steal_vcpu"] for r in R]) if R else 0
    errors = sum(r["errors"] for r in R)

    w("# viewgate benchmarks")
    w("")
    w(f"Generated by `bench/run{' --quick' if b.quick else ''}` on **{mf['date']}**.")
    w("")
    w(f"- Machine: {mf['nproc']} vCPUs ({mf['cpu']}), {mf['mem_mib'] // 1024} GiB, kernel {mf['kernel']}, "
      f"virtualisation: {mf['virt']}; load average at start {' '.join(mf['loadavg'])}.")
    vg_what = b.viewgate_label or (
        f"{mf['commit']}{' + uncommitted changes' if mf['dirty'] else ''}")
    w(f"- Software: viewgate {vg_what} (release build of {b.vg_built}), {mf['rustc']}, {mf['wrk']}, "
      f"{mf['nginx']}.")
    w(f"- Runs: {b.rounds} round(s) of {b.duration} s per run; {len(R)} runs in {b.facts['elapsed_s'] / 60:.1f} min; "
      f"waited {b.quiet_waited:.0f} s for a quiet machine.")
    w(f"- Noise: **{disturbed} of {len(R)} kept runs disturbed** by other processes "
      f"({repeated} repeated once); median CPU used by others during a run {other_med:.2f} vCPU, "
      f"median steal {steal_med:.3f} vCPU. {errors} request errors in all runs.")
    if b.phases != set(PHASES):
        w(f"- Only these phases ran: {', '.join(p for p in PHASES if p in b.phases)}.")
    if b.quick:
        w("- **Quick mode** (smoke test of the script): 1 round, 2 s runs, smaller cache fill. "
          "Not for decisions.")
    w("")

    # ---- hit path
    hit = {}
    if any(r["phase"] == "hit" for r in R):
        w("## 1. Hit path: viewgate (a) vs nginx proxy_cache (b) vs static hyper ceiling (c)")
        w("")
        w("Medians over the undisturbed runs of each cell (over all its runs when every one was disturbed: "
          "marked `!`). CPU = server CPU time per request. `d` = runs disturbed by other processes / runs.")
        w("")
        w("| placement | conns | server | req/s | p50 µs | p99 µs | CPU µs/req | server vCPUs | wrk vCPU | d |")
        w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for cell in ("shared/64", "confined/64", "shared/1", "confined/1", "same/1"):
            pl, conns = cell.split("/")
            for s in SERVERS:
                st = cellstats("hit", cell, s)
                if not st:
                    continue
                hit[(cell, s)] = st
                w(f"| {pl} | {conns} | {s} | {fmt_int(st['rps'])} | {fmt(st['p50_us'], 0)} | {fmt(st['p99_us'], 0)} | "
                  f"{fmt(st['cpu_us_per_req'])} | {fmt(st['server_cpu_vcpu'], 2)} | {fmt(st['wrk_cpu_vcpu'], 2)} | "
                  f"{st['d']} |")
        w("")
        w("Ratios (same run, medians): a/b = viewgate ÷ nginx, a/c = viewgate ÷ ceiling. For req/s higher is "
          "better for viewgate; for latency and CPU lower is better.")
        w("")
        w("| placement | conns | req/s a/b | req/s a/c | p50 a/b | p50 a/c | p99 a/b | p99 a/c | CPU a/b | CPU a/c |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for cell in ("shared/64", "confined/64", "shared/1", "confined/1", "same/1"):
            a, bb, c = hit.get((cell, "viewgate")), hit.get((cell, "nginx")), hit.get((cell, "ceiling"))
            if not (a and bb and c):
                continue
            pl, conns = cell.split("/")
            cols = []
            for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req"):
                cols += [f"{ratio(a[k], bb[k]):.2f}", f"{ratio(a[k], c[k]):.2f}"]
            w(f"| {pl} | {conns} | " + " | ".join(cols) + " |")
        w("")
        ng_hy = [ratio(hit[(c, 'nginx')]['rps'], hit[(c, 'ceiling')]['rps']) for c in ("shared/64", "confined/64")
                 if (c, 'nginx') in hit and (c, 'ceiling') in hit]
        if len(ng_hy) == 2:
            w(f"For calibration against the issue's reference figures: nginx ÷ ceiling req/s at 64 connections is "
              f"{ng_hy[0]:.2f} shared, {ng_hy[1]:.2f} confined (issue: ≈0.98 and 0.65).")
            w("")

    # ---- targets
    w("## Targets (issue 16, all with the access log on, SQLite ledger unless stated)")
    w("")
    w("| target | measured | limit | result |")
    w("|---|---|---|---|")
    targets = []

    def target(name, measured, limit, ok, *cells):
        noisy = any(c is not None and not c["clean"] for c in cells)
        targets.append((name, ok))
        w(f"| {name} | {measured} | {limit} | {'**pass**' if ok else '**FAIL**'}"
          f"{' (from disturbed runs)' if noisy else ''} |")

    for cell in ("shared/64", "confined/64"):
        a, bb = hit.get((cell, "viewgate")), hit.get((cell, "nginx"))
        if not (a and bb):
            continue
        pl = cell.split("/")[0]
        target(f"hit req/s ≥ 1.1× nginx ({pl}, 64 conns)", f"{fmt_int(a['rps'])} vs {fmt_int(bb['rps'])} "
               f"({ratio(a['rps'], bb['rps']):.2f}×)", "≥ 1.10×", a["rps"] >= 1.1 * bb["rps"], a, bb)
        target(f"hit CPU/req ≤ 0.85× nginx ({pl}, 64 conns)",
               f"{a['cpu_us_per_req']:.1f} µs vs {bb['cpu_us_per_req']:.1f} µs "
               f"({ratio(a['cpu_us_per_req'], bb['cpu_us_per_req']):.2f}×)", "≤ 0.85×",
               a["cpu_us_per_req"] <= 0.85 * bb["cpu_us_per_req"], a, bb)
        target(f"hit p99 ≤ 1.2× nginx ({pl}, 64 conns)", f"{a['p99_us']:.0f} µs vs {bb['p99_us']:.0f} µs "
               f"({ratio(a['p99_us'], bb['p99_us']):.2f}×)", "≤ 1.20×", a["p99_us"] <= 1.2 * bb["p99_us"], a, bb)
    xa, xb = cellstats("mix", "shared/64", "viewgate"), cellstats("mix", "shared/64", "nginx")
    if xa and xb:
        target("90/10 mix req/s ≥ nginx (shared, 64 conns)", f"{fmt_int(xa['rps'])} vs {fmt_int(xb['rps'])} "
               f"({ratio(xa['rps'], xb['rps']):.2f}×)", "≥ 1.00×", xa["rps"] >= xb["rps"], xa, xb)
    md = cellstats("miss", "shared/1", label="simulator direct")
    for cell in ("shared/1", "shared/64"):
        mm = cellstats("miss", cell, label="viewgate (memory ledger)")
        if mm:
            target(f"miss: viewgate's own CPU ≤ 60 µs (memory ledger, {cell.split('/')[1]} conn)",
                   f"{mm['cpu_us_per_req']:.1f} µs (simulator: {fmt(mm['also'][0])} µs)", "≤ 60 µs",
                   mm["cpu_us_per_req"] <= 60, mm)
    mv = cellstats("miss", "shared/1", label="viewgate (sqlite ledger)")
    if mv and md:
        over = mv["p50_us"] - md["p50_us"]
        target("miss: SQLite viewgate adds ≤ 250 µs p50 (1 conn)",
               f"{over:.0f} µs ({mv['p50_us']:.0f} − {md['p50_us']:.0f})", "≤ 250 µs", over <= 250, mv, md)
    m64 = cellstats("miss", "shared/64", label="viewgate (sqlite ledger)")
    if m64:
        target("miss: SQLite misses/s at 64 conns", f"{fmt_int(m64['rps'])}/s", "≥ 20,000/s",
               m64["rps"] >= 20_000, m64)
    rss = b.rss
    if rss:
        limit_kib = rss["max_bytes"] // 1024 + 64 * 1024
        target(f"peak RSS with the cache full ({rss['max_bytes'] // MIB} MiB cache)",
               f"{rss['hwm_kib'] / 1024:.0f} MiB", f"≤ {limit_kib / 1024:.0f} MiB", rss["hwm_kib"] <= limit_kib)
    base = cellstats("tenants", "shared/64", label="10")
    if base:
        worst = min((cellstats("tenants", "shared/64", label=str(n))["rps"] / base["rps"], n)
                    for n in b.tenant_counts)
        target("flat req/s, 10 → 10,000 tenants", f"worst {worst[0]:.2f}× of 10 tenants (at {worst[1]:,})",
               "≥ 0.90×", worst[0] >= 0.90,
               *[cellstats("tenants", "shared/64", label=str(n)) for n in b.tenant_counts])
    if "upstream_calls_during_hit_runs" in b.facts:
        target("no upstream call during hit runs", str(b.facts["upstream_calls_during_hit_runs"]), "0",
               b.facts["upstream_calls_during_hit_runs"] == 0)
    w("")
    fails = [n for n, ok in targets if not ok]
    w(f"{len(targets) - len(fails)} of {len(targets)} targets met." + (
        " Missed: " + "; ".join(fails) + "." if fails else ""))
    w("")
    if hit:
        w("![throughput and CPU per request](benchmarks.png)")
        w("")

    # ---- secondary
    w("## 2. Also measured")
    w("")
    w("Medians as above (undisturbed runs preferred; `!`: every run was disturbed).")
    w("")
    if mv or md:
        w("### Miss path (unique pages, simulator latency 0)")
        w("")
        w("| conns | path | req/s | p50 µs | p99 µs | viewgate CPU µs/req | simulator CPU µs/req | d |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|")
        for cell in ("shared/1", "shared/64"):
            for label in ("viewgate (sqlite ledger)", "viewgate (memory ledger)", "simulator direct"):
                st = cellstats("miss", cell, label=label)
                if not st:
                    continue
                direct = label == "simulator direct"
                vg_cpu = "—" if direct else fmt(st["cpu_us_per_req"])
                sim_cpu = fmt(st["cpu_us_per_req"]) if direct else fmt(st["also"][0])
                w(f"| {cell.split('/')[1]} | {label} | {fmt_int(st['rps'])} | {fmt(st['p50_us'], 0)} | "
                  f"{fmt(st['p99_us'], 0)} | {vg_cpu} | {sim_cpu} | {st['d']} |")
        w("")
        for label in ("viewgate (sqlite ledger)", "viewgate (memory ledger)"):
            v = cellstats("miss", "shared/1", label=label)
            if v and md:
                w(f"- {label}, 1 connection: adds **{v['p50_us'] - md['p50_us']:.0f} µs p50**, "
                  f"{v['p99_us'] - md['p99_us']:.0f} µs p99, and {v['cpu_us_per_req']:.1f} µs of its own CPU "
                  f"per miss over calling the simulator directly.")
        w("")
    if cellstats("mix", "shared/64"):
        w("### 90% hits, 10% misses (64 connections, shared placement)")
        w("")
        w("| server | req/s | p50 µs | p99 µs | server CPU µs/req | simulator CPU µs/req | d |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for s in ("viewgate", "nginx"):
            st = cellstats("mix", "shared/64", s)
            if st:
                w(f"| {s} | {fmt_int(st['rps'])} | {fmt(st['p50_us'], 0)} | {fmt(st['p99_us'], 0)} | "
                  f"{fmt(st['cpu_us_per_req'])} | {fmt(st['also'][0])} | {st['d']} |")
        w("")
    if rss:
        w("### Memory with the cache full")
        w("")
        w("| cache.max_bytes | distinct pages sent | cache entries / bytes after | peak RSS (VmHWM) "
          "| RSS after | limit (max_bytes + 64 MiB) |")
        w("|---:|---:|---:|---:|---:|---:|")
        w(f"| {rss['max_bytes'] // MIB} MiB | {fmt_int(rss['pages_requested'])} ({rss['errors']} errors, "
          f"{fmt_int(rss['fill_rps'])} misses/s) | {fmt_int(rss['cache_entries'] or 0)} / "
          f"{(rss['cache_bytes'] or 0) / MIB:.1f} MiB | **{rss['hwm_kib'] / 1024:.0f} MiB** | "
          f"{rss['rss_kib'] / 1024:.0f} MiB | {limit_kib / 1024:.0f} MiB |")
        w("")
        w(f"Peak RSS before the fill: {rss['hwm_before_kib'] / 1024:.0f} MiB; filling took {rss['fill_s']:.0f} s.")
        w("")
    if base:
        w("### Hit path as the tenant count grows (64 connections, shared placement)")
        w("")
        w("| tenants | req/s | vs 10 | p50 µs | p99 µs | CPU µs/req | d |")
        w("|---:|---:|---:|---:|---:|---:|---:|")
        for n in b.tenant_counts:
            st = cellstats("tenants", "shared/64", label=str(n))
            w(f"| {n:,} | {fmt_int(st['rps'])} | {ratio(st['rps'], base['rps']):.2f} | {fmt(st['p50_us'], 0)} | "
              f"{fmt(st['p99_us'], 0)} | {fmt(st['cpu_us_per_req'])} | {st['d']} |")
        w("")
    on, off = cellstats("log", "shared/64", label="log on"), cellstats("log", "shared/64", label="log off")
    if on and off:
        w("### Cost of the access log line (64 connections, shared placement)")
        w("")
        w("| log | req/s | p50 µs | p99 µs | CPU µs/req | d |")
        w("|---|---:|---:|---:|---:|---:|")
        for name, st in (("on (info)", on), ("off (warn)", off)):
            w(f"| {name} | {fmt_int(st['rps'])} | {fmt(st['p50_us'], 0)} | {fmt(st['p99_us'], 0)} | "
              f"{fmt(st['cpu_us_per_req'])} | {st['d']} |")
        w("")
        w(f"The access line costs {on['cpu_us_per_req'] - off['cpu_us_per_req']:.1f} µs of CPU per request "
          f"({ratio(on['cpu_us_per_req'], off['cpu_us_per_req']):.2f}×) and "
          f"{100 * (1 - ratio(on['rps'], off['rps'])):.0f}% of throughput.")
        w("")

    # ---- facts and notes
    w("## How it was measured")
    w("")
    w("Run it with `bench/run` (about 12–15 minutes; `bench/run --quick` is a ~3-minute smoke test "
      "whose report goes to a temporary directory, not here). It installs wrk, nginx and gnuplot "
      "with apt if missing, builds `cargo build --release` and `bench/ceiling`, and writes this file, "
      "`docs/benchmarks.png` and the raw runs in `docs/benchmarks.json`.")
    w("")
    w(NOTES)
    th = b.facts["threads"]
    w("Observed: " + "; ".join(
        f"{name}: {sum(v for k, v in t.items())} threads, "
        f"{sum(v for k, v in t.items() if k.startswith('tokio-rt') or k.startswith('tokio-runtime'))} tokio workers, "
        f"{sum(v for k, v in t.items() if k.startswith('viewgate-w'))} serving threads"
        for name, t in th.items())
      + f"; nginx workers: {b.facts['nginx_workers']}. A viewgate hit body is {b.facts['hit_body_bytes']} bytes. "
        f"Upstream calls during all hit-path, log and tenant runs: {b.facts['upstream_calls_during_hit_runs']}.")
    w("")
    return "\n".join(L) + "\n", targets


def write_plot(b, out_png):
    """Throughput and CPU per request, per server and placement (gnuplot, pngcairo)."""
    if not shutil.which("gnuplot"):
        log("gnuplot missing: no plot")
        return False
    if not any(r["phase"] == "hit" for r in b.results):
        return False
    rows = {}
    for r in b.results:
        if r["phase"] == "hit":
            rows.setdefault((r["cell"], r["kind"]), []).append(r)
    cells = [("shared/64", "shared\\n64 conns"), ("confined/64", "confined\\n64 conns"),
             ("shared/1", "shared\\n1 conn"), ("confined/1", "confined\\n1 conn"), ("same/1", "same vCPU\\n1 conn")]
    dat = os.path.join(b.work, "plot.dat")
    with open(dat, "w") as f:
        f.write("# cell viewgate_krps nginx_krps ceiling_krps viewgate_cpu_us nginx_cpu_us ceiling_cpu_us\n")
        for cell, title in cells:
            if not all((cell, s) in rows for s in SERVERS):
                continue
            vals = [med(usable(rows[(cell, s)]), "rps") / 1000 for s in SERVERS]
            vals += [med(usable(rows[(cell, s)]), "cpu_us_per_req") for s in SERVERS]
            f.write(f"\"{title}\" " + " ".join(f"{v:.3f}" for v in vals) + "\n")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    hits = [r for r in b.results if r["phase"] == "hit"]
    noisy = sum(r["disturbed"] for r in hits)
    title = (f"viewgate cache hits vs nginx proxy_cache vs static hyper ceiling: wrk -t1 on vCPU 0, "
             f"medians of {b.rounds} round(s), {when}{' (QUICK)' if b.quick else ''}"
             + (f"; {noisy} of {len(hits)} runs disturbed by other load" if noisy else ""))
    gp = os.path.join(b.work, "plot.gp")
    with open(gp, "w") as f:
        f.write(f"""set terminal pngcairo noenhanced size 1400,600 font "sans,11"
set output "{out_png}"
set multiplot layout 1,2 title "{title}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top center horizontal samplen 2
set offsets 0, 0, graph 0.12, 0
set bmargin 4
set yrange [0:*]
set xtics font "sans,10"
set title "Throughput (thousand requests/s)"
plot "{dat}" using 2:xtic(1) title "viewgate" lc rgb "#1f77b4", '' using 3 title "nginx proxy_cache" lc rgb "#2ca02c", '' using 4 title "ceiling (hyper)" lc rgb "#7f7f7f"
set title "Server CPU time per request (µs)"
plot "{dat}" using 5:xtic(1) title "viewgate" lc rgb "#1f77b4", '' using 6 title "nginx proxy_cache" lc rgb "#2ca02c", '' using 7 title "ceiling (hyper)" lc rgb "#7f7f7f"
unset multiplot
""")
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if p.returncode != 0:
        log(f"gnuplot failed: {p.stderr[-1000:]}")
        return False
    return True


SETTINGS = ("quick", "rounds", "duration", "tenant_counts", "quiet_waited", "viewgate_label", "vg_built")


def report_from(args):
    """Rebuilds benchmarks.md and .png from a saved benchmarks.json (no load is run)."""
    import types
    data = json.load(open(args.report_from))
    out = args.out or os.path.dirname(os.path.abspath(args.report_from))
    b = types.SimpleNamespace(**data["settings"])
    b.phases = set(b.phases)
    b.facts, b.rss, b.results = data["facts"], data["rss"], data["runs"]
    b.work = tempfile.mkdtemp(prefix="viewgate-bench-report.")
    try:
        report, _ = build_report(b, data["machine"])
        write_plot(b, os.path.join(out, "benchmarks.png"))
        with open(os.path.join(out, "benchmarks.md"), "w") as f:
            f.write(report)
        print(report)
    finally:
        shutil.rmtree(b.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description="viewgate hit/miss benchmark (issue 6)")
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s runs: a smoke test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per run")
    ap.add_argument("--viewgate", default=os.path.join(REPO, "target", "release", "viewgate"))
    ap.add_argument("--ceiling", default=os.path.join(BENCH, "ceiling", "target", "release",
                                                     "viewgate-bench-ceiling"))
    ap.add_argument("--viewgate-label", help="what the viewgate binary is (default: this checkout's commit)")
    ap.add_argument("--out", help="where the report goes (default docs/, or a temp dir with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    ap.add_argument("--only", help="comma-separated phases to run: " + ",".join(PHASES) + " (default all)")
    ap.add_argument("--report-from", metavar="JSON",
                    help="only rebuild the report (md, png) from a benchmarks.json of an earlier run")
    args = ap.parse_args()
    if args.report_from:
        return report_from(args)
    if not args.out:
        args.out = (os.path.join(tempfile.gettempdir(), "viewgate-bench-quick") if args.quick
                    else os.path.join(REPO, "docs"))
    os.makedirs(args.out, exist_ok=True)
    if (os.cpu_count() or 0) < 2:
        raise SystemExit("needs at least 2 vCPUs (wrk on one, the server on the other)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(args)
    try:
        mf = machine_facts()
        b.run()
        report, targets = build_report(b, mf)
        png = os.path.join(args.out, "benchmarks.png")
        write_plot(b, png)
        with open(os.path.join(args.out, "benchmarks.md"), "w") as f:
            f.write(report)
        with open(os.path.join(args.out, "benchmarks.json"), "w") as f:
            json.dump({"machine": mf, "settings": {k: getattr(b, k) for k in SETTINGS} | {"phases": sorted(b.phases)},
                       "facts": b.facts, "rss": b.rss, "runs": b.results}, f, indent=1)
        print(report)
        log(f"wrote {args.out}/benchmarks.md, benchmarks.png, benchmarks.json")
    finally:
        stop_all()
        if args.keep:
            log(f"kept {b.work}")
        else:
            shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
