"""`make bench`: the agent beside plain clients, on the same local S3 servers, in the same run.

Starts moto's server and (where installed) Ceph RGW on 127.0.0.1, runs `postbox-agent run` as a
process with the settings the user-data gives it, and prints one table: each agent figure, its
reference measured in the same run, their ratio (medians of --runs runs) and the goal. Nothing
here asserts: goals are printed beside what was measured, and `make test` holds no timing.

    python -m benchmarks.bench [--runs 3] [--only ROW,...] [--servers moto,rgw]
                               [--concurrency N] [--sweep 1,2,4,8,16] [--idle-seconds 60]

Rows: files (1,000 x 4 KiB), latency (close -> stored at 20 and 5 files/s, written here or
renamed in), large (256 MiB and 1 GiB against curl), startup (100,000 journaled files: READY=1
and peak RSS), idle (CPU over --idle-seconds), wan (2 GiB through a simulated WAN, benchmarks/
wan.py: in 64 MiB parts against the agent sending it whole and rclone's multipart copy), resume
(2 GiB in parts, killed half-way: what it sent in all), huge (6 GiB on RGW, close to assembled
object, against rclone), bandwidth (POSTBOX_BANDWIDTH_LIMIT=20MiB/s: the rate over a 512 MiB
file whole and in parts, and 1,000 files of 512 KiB, against the limit). rclone comes from
Debian (`apt install rclone`); the bench installs nothing, and shows a peer it cannot find as
missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import requests
from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from agent.bandwidth import format_rate
from benchmarks.wan import Wan, wan
from demo.batch import lay_out
from demo.stores import CREDENTIALS, Store, moto_server, rgw_available, rgw_server, s3_client
from demo.systemd import NotifyListener
from issuer.cli import main as issuer_main
from issuer.userdata import AgentOptions

MiB = 1024 * 1024
ROWS = ("files", "peers", "crowd", "latency", "large", "startup", "idle", "wan", "resume", "huge",
        "bandwidth", "properties")  # fmt: skip
ASKED = ("huge", "crowd", "properties")  # rows run only when named (--only): RESULTS.md
PART = 64 * MiB  # the agent's default POSTBOX_PART_BYTES


@dataclass
class Row:
    work: str
    server: str
    agent: str
    reference: str
    ratio: str
    goal: str


class Agent:
    """`postbox-agent run` in a process, with its own watch and state dirs."""

    def __init__(self, work: Path, grant: Path, **settings: str) -> None:
        self.work = work
        self.watch, self.state = work / "watch", work / "state"
        self.watch.mkdir(parents=True, exist_ok=True)
        env_file = work / "agent.env"
        env_file.write_text("")
        defaults = AgentOptions()  # what the user-data sets
        self.env = {
            **os.environ,
            "POSTBOX_GRANT_FILE": str(grant),
            "POSTBOX_WATCH_DIR": str(self.watch),
            "POSTBOX_STATE_DIR": str(self.state),
            "POSTBOX_ENV_FILE": str(env_file),
            "POSTBOX_CONCURRENCY": str(defaults.concurrency),
            "POSTBOX_SETTLE_SECONDS": f"{defaults.settle_seconds:g}",
            "POSTBOX_LOG_LEVEL": "WARNING",
            **{f"POSTBOX_{k.upper()}": v for k, v in settings.items()},
        }
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.notify: Optional[NotifyListener] = None

    def start(self) -> float:
        """Start and wait for READY=1; returns the seconds that took."""
        sock = Path(tempfile.mkdtemp(prefix="bench-notify-")) / "notify.sock"
        self.notify = NotifyListener(sock)
        began = time.monotonic()
        with (self.work / "agent.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run"],
                env={**self.env, "NOTIFY_SOCKET": str(sock)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not self.notify.wait_for("READY=1", 300):
            raise RuntimeError(f"the agent did not get ready; see {self.work / 'agent.log'}")
        return time.monotonic() - began

    def drop(self, source: Path, name: str = "large.bin") -> float:
        """A copy of `source` renamed into the watch dir as `name`, as a job finishes a large
        file; the wall-clock time of the rename, when the file became complete."""
        staged = self.work / "staged.bin"
        shutil.copyfile(source, staged)
        began = time.time()
        os.rename(staged, self.watch / name)
        return began

    def sent(self) -> dict[str, float]:
        """Each journaled file and when it was recorded (wall clock)."""
        path = self.state / "journal.sqlite3"
        if not path.exists():
            return {}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return dict(db.execute("SELECT path, sent_at FROM sent").fetchall())
        except sqlite3.OperationalError:
            return {}
        finally:
            db.close()

    def wait_sent(self, count: int, timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sent_count() >= count:  # a count, not 100,000 rows 50 times a second
                return self.sent()
            time.sleep(0.02)
        raise RuntimeError(f"only {self.sent_count()} of {count} files sent in {timeout:.0f} s")

    def sent_count(self) -> int:
        path = self.state / "journal.sqlite3"
        if not path.exists():
            return 0
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(db.execute("SELECT COUNT(*) FROM sent").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    def status(self, field: str) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(120)
        if self.notify is not None:
            self.notify.close()


class Bench:
    def __init__(self, store: Store, root: Path, runs: int, concurrency: Optional[int]) -> None:
        self.store, self.root, self.runs = store, root, runs
        self.settings = {"concurrency": str(concurrency)} if concurrency else {}
        self.s3 = s3_client(store)

    @contextlib.contextmanager
    def bucket(self, *options: str) -> Iterator[tuple[str, Path, dict[str, Any]]]:
        """A new bucket and a grant for it (`grant`'s defaults, and `options`); the bucket is
        emptied and removed afterwards."""
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(Bucket=name)
        grant = self.root / f"{name}.json"
        argv = ["grant", "--bucket", name, "--prefix", "b/", "--expires", "2h"]
        argv += ["--endpoint-url", self.store.endpoint, "--region", self.store.region]
        assert issuer_main([*argv, "--max-size", "5GiB", *options, "-o", str(grant)]) == 0
        try:
            yield name, grant, json.loads(grant.read_text())
        finally:
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:  # a page is at most 1,000 keys, what DeleteObjects takes
                    self.s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            self.s3.delete_bucket(Bucket=name)

    def agent(self, grant: Path, **settings: str) -> Agent:
        work = Path(tempfile.mkdtemp(prefix="agent-", dir=self.root))
        return Agent(work, grant, **{**self.settings, **settings})

    # 1,000 x 4 KiB dropped at once.
    def files(self, count: int = 1000) -> list[Row]:
        agent_s, sequential_s, threaded_s, cpu = [], [], [], []
        payload = os.urandom(4096)
        for _ in range(self.runs):
            with self.bucket() as (_, grant, document):
                agent = self.agent(grant)
                agent.start()
                began = time.monotonic()
                for n in range(count):
                    (agent.watch / f"f{n:04d}.bin").write_bytes(payload)
                before = agent.cpu_seconds()
                agent.wait_sent(count, 600)
                agent_s.append(time.monotonic() - began)
                cpu.append(agent.cpu_seconds() - before)
                agent.stop()
                sequential_s.append(_post_all(document, payload, count, threads=1, tag="s"))
                threaded_s.append(_post_all(document, payload, count, threads=16, tag="t"))
        agent, seq, thr = (statistics.median(x) for x in (agent_s, sequential_s, threaded_s))
        work = f"{count:,} x 4 KiB dropped at once"
        per_file = statistics.median(cpu) / count * 1000
        said = f"{agent:.2f} s ({count / agent:.0f}/s, {per_file:.1f} ms CPU a file)"
        return [
            Row(
                work,
                self.store.kind,
                said,
                f"1 thread {seq:.2f} s ({count / seq:.0f}/s)",
                f"{seq / agent:.2f}x",
                ">= 10x",
            ),
            Row(
                work,
                self.store.kind,
                said,
                f"16 threads {thr:.2f} s ({count / thr:.0f}/s)",
                f"{thr / agent:.2f}x",
                ">= 0.8x",
            ),
        ]

    # N small files moved into the watch dir, beside the tools users compare the agent with.
    def peers(self, count: int, size: int = 4096) -> list[Row]:
        """The agent (its defaults) against `rclone copy --transfers 8` and `aws s3 cp
        --recursive` of the same files into the same bucket, each with S3 credentials. Time
        from the first file in place to the last stored, and each client's CPU time from its
        own process counters (the agent's /proc stat; the peers' rusage as children)."""
        source = self._files(count, size)
        agent_s, agent_cpu, peaks = [], [], []
        peer_s: dict[str, list[Optional[tuple[float, float]]]] = {"rclone": [], "aws": []}
        for _ in range(self.runs):
            with self.bucket() as (name, grant, _document):
                took, cpu, peak = self._arrive(grant, source, count, "one by one", size)
                agent_s.append(took)
                agent_cpu.append(cpu)
                peaks.append(peak)
                peer_s["rclone"].append(_rclone_files(self.store, source, name))
                peer_s["aws"].append(_aws_files(self.store, source, name))
        agent = statistics.median(agent_s)
        work = f"{count:,} x {size // 1024} KiB moved into the watch dir"
        said = _said(count, agent, statistics.median(agent_cpu), max(peaks))
        rows = []
        for peer, label, goal in (
            ("rclone", "`rclone copy --transfers 8`", ">= 1.0x; <= 0.7 ms CPU a file"),
            ("aws", "`aws s3 cp --recursive`", "-"),
        ):
            runs = peer_s[peer]
            if any(r is None for r in runs):
                rows.append(Row(work, self.store.kind, said, f"{label}: not installed", "missing",
                                goal))  # fmt: skip
                continue
            took = statistics.median(r[0] for r in runs if r is not None)
            used = statistics.median(r[1] for r in runs if r is not None) / count * 1000
            reference = f"{label}: {took:.2f} s ({count / took:.0f}/s, {used:.2f} ms CPU a file)"
            rows.append(Row(work, self.store.kind, said, reference, f"{took / agent:.2f}x", goal))
        return rows

    # What the objects' properties cost (issue 34): the grant's defaults against none.
    def properties(self, count: int = 10_000, size: int = 1024 * MiB) -> list[Row]:
        """The agent with a default grant (Content-Type, x-amz-meta-sha256 and -mtime signed:
        each object's bytes read once for the SHA-256 before they are sent) against the same
        agent with `--no-content-type --no-metadata`, alternated run by run: `count` x 4 KiB
        moved in one by one (files a second, the agent's CPU a file), and one file of `size`."""
        small, large = self._files(count, 4096), _source(self.root, size)
        plain = ("--no-content-type", "--no-metadata")
        files: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
        whole: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(self.runs):
            for signed in (True, False):
                with self.bucket(*(() if signed else plain)) as (_name, grant, _document):
                    files[signed].append(self._arrive(grant, small, count, "one by one", 4096))
                with self.bucket(*(() if signed else plain)) as (_name, grant, _document):
                    agent = self.agent(grant)
                    agent.start()
                    began = agent.drop(large)
                    whole[signed].append(agent.wait_sent(1, 1200)["large.bin"] - began)
                    agent.stop()
        rate = {k: count / statistics.median(r[0] for r in v) for k, v in files.items()}
        cpu = {k: statistics.median(r[1] for r in v) / count * 1000 for k, v in files.items()}
        mib = {k: size / MiB / statistics.median(v) for k, v in whole.items()}
        goal = ">= 0.95x (where the SHA-256's read costs more: measured)"
        return [
            Row(f"{count:,} x 4 KiB moved in, default grant", self.store.kind,
                f"{rate[True]:.0f}/s, {cpu[True]:.2f} ms CPU a file",
                f"no properties signed: {rate[False]:.0f}/s, {cpu[False]:.2f} ms CPU a file",
                f"{rate[True] / rate[False]:.2f}x", goal),
            Row(f"one {size // MiB} MiB file, default grant", self.store.kind,
                f"{mib[True]:.0f} MiB/s", f"no properties signed: {mib[False]:.0f} MiB/s",
                f"{mib[True] / mib[False]:.2f}x", goal),
        ]  # fmt: skip

    # 100,000 small files at once against 1,000: the pace holds, the memory stays bounded.
    def crowd(
        self, count: int = 100_000, size: int = 1024, few: int = 1000, waiting: int = 300_000
    ) -> list[Row]:
        """`count` files moved in one by one, as one folder moved in, and written in place, and
        a start with `waiting` files left from before; against `few` moved in one by one in the
        same run."""
        hows = ("one by one", "as one folder", "written in place")
        measured: dict[tuple[int, str], list[tuple[float, float, int]]] = {}
        for n, how in ((few, hows[0]), *((count, h) for h in hows), (waiting, "waiting")):
            source = self._files(n, size) if how in hows[:2] else self.root
            for _ in range(self.runs):
                with self.bucket() as (_name, grant, _document):
                    runs = measured.setdefault((n, how), [])
                    runs.append(self._arrive(grant, source, n, how, size))
        rate = {k: k[0] / statistics.median(r[0] for r in runs) for k, runs in measured.items()}
        reference = f"the agent, {few:,} files one by one: {rate[few, hows[0]]:.0f}/s"
        rows = []
        for n, how in [(count, h) for h in hows] + [(waiting, "waiting")]:
            many = measured[n, how]
            cpu, peak = statistics.median(r[1] for r in many), max(r[2] for r in many)
            what = (
                f"a start with {n:,} x 1 KiB waiting in the watch dir"
                if how == "waiting"
                else f"{n:,} x {size // 1024} KiB {how}"
                + (" into the watch dir" if how != hows[2] else " in the watch dir")
            )
            rows.append(Row(what, self.store.kind, _said(n, n / rate[n, how], cpu, peak),
                            reference, f"{rate[n, how] / rate[few, hows[0]]:.2f}x",
                            ">= 0.9x; RSS <= 150 MiB"))  # fmt: skip
        return rows

    def _files(self, count: int, size: int) -> Path:
        """A folder of `count` files of `size` random bytes, made once for every run."""
        source = self.root / f"files-{count}-{size}"
        if not source.exists():
            source.mkdir()
            payload = os.urandom(size)
            for n in range(count):
                (source / f"f{n:06d}.bin").write_bytes(payload)
        return source

    def _arrive(
        self, grant: Path, source: Path, count: int, how: str, size: int
    ) -> tuple[float, float, int]:
        """`count` files arrive in a new agent's watch dir: a copy of `source`'s renamed in one
        by one, as a job moves its results in ("one by one"), or the copy's folder renamed in
        at once ("as one folder"); or written there ("written in place"); or laid out with the
        agent's journal before it starts ("waiting"). (Seconds until the last is journaled, the
        agent's CPU seconds meanwhile, its peak RSS.)"""
        agent = self.agent(grant)
        if how == "waiting":
            lay_out(agent.watch, agent.state, count // 1000, 1000, unsent=count)
            began = time.monotonic()
            agent.start()
            before = 0.0
        else:
            agent.start()
            staging = agent.work / "staging"
            if how != "written in place":
                shutil.copytree(source, staging)
            before, began = agent.cpu_seconds(), time.monotonic()
            if how == "as one folder":
                os.rename(staging, agent.watch / "batch")
            elif how == "one by one":
                for entry in os.scandir(staging):
                    os.rename(entry.path, agent.watch / entry.name)
            else:
                payload = os.urandom(size)
                for n in range(count):
                    (agent.watch / f"f{n:06d}.bin").write_bytes(payload)
        agent.wait_sent(count, 3600)
        took, cpu = time.monotonic() - began, agent.cpu_seconds() - before
        peak = agent.status("VmHWM")
        agent.stop()
        return took, cpu, peak

    # Close -> stored, at a steady rate.
    def latency(self, rate: float, renamed: bool, seconds: float = 10) -> Row:
        agent_p: list[tuple[float, float]] = []
        reference_p: list[tuple[float, float]] = []
        count = int(rate * seconds)
        for _ in range(self.runs):
            with self.bucket() as (_, grant, document):
                agent = self.agent(grant)
                agent.start()
                closed = _write_steadily(agent.watch, rate, count, renamed)
                sent = agent.wait_sent(count, 120)
                agent.stop()
                agent_p.append(_percentiles([sent[p] - t for p, t in closed.items()]))
                reference_p.append(_percentiles(_reference_latency(document, rate, count, renamed)))
        agent50 = statistics.median(p[0] for p in agent_p)
        agent99 = statistics.median(p[1] for p in agent_p)
        ref50 = statistics.median(p[0] for p in reference_p)
        ref99 = statistics.median(p[1] for p in reference_p)
        how = "renamed in" if renamed else "written in place"
        return Row(
            f"close -> stored, {rate:g} files/s, {how}",
            self.store.kind,
            f"p50 {agent50 * 1000:.1f} ms, p99 {agent99 * 1000:.1f} ms",
            f"watcher + 2 threads: p50 {ref50 * 1000:.1f} ms, p99 {ref99 * 1000:.1f} ms",
            f"p50 {agent50 / ref50:.1f}x, p99 {agent99 / ref99:.1f}x",
            "p50 <= 30 ms, p99 <= 100 ms",
        )

    # One large file, against curl.
    def large(self, size: int) -> Row:
        source = _source(self.root, size)
        agent_s, curl_s, peaks = [], [], []
        for _ in range(self.runs):
            with self.bucket() as (_, grant, document):
                agent = self.agent(grant)
                agent.start()
                began = agent.drop(source)
                sent = agent.wait_sent(1, 1200)
                agent_s.append(sent["large.bin"] - began)
                peaks.append(agent.status("VmHWM"))
                agent.stop()
                curl_s.append(_curl(document, source, "b/curl.bin"))
        agent, curl = statistics.median(agent_s), statistics.median(curl_s)
        mib = size / MiB
        return Row(
            f"one {mib:g} MiB file",
            self.store.kind,
            f"{mib / agent:.0f} MiB/s, peak RSS {max(peaks) / MiB:.0f} MiB",
            f"curl -F: {mib / curl:.0f} MiB/s",
            f"{curl / agent:.2f}x",
            ">= 0.9x; RSS <= 64 MiB",
        )

    # Start-up over 100,000 journaled files.
    def startup(self, folders: int = 100, per_folder: int = 1000) -> Row:
        with self.bucket() as (_, grant, _document):
            agent = self.agent(grant)
            lay_out(agent.watch, agent.state, folders, per_folder)
            ready, peaks, walks = [], [], []
            for _ in range(self.runs):
                walks.append(_walk(agent.watch))
                ready.append(agent.start())
                peaks.append(agent.status("VmHWM"))
                agent.stop()
        files = folders * per_folder
        walk = statistics.median(walks)
        return Row(
            f"start-up, {files:,} files present and journaled",
            self.store.kind,
            f"READY=1 in {statistics.median(ready):.2f} s, peak RSS {max(peaks) / MiB:.0f} MiB",
            f"a bare walk + lstat: {walk:.2f} s",
            f"{statistics.median(ready) / walk:.1f}x the walk",
            "READY <= 10 s; <= 200 MiB",
        )

    def _send_through(self, link: Wan, grant: Path, source: Path, **settings: str) -> float:
        """The agent, its store behind `link`, sends `source` (renamed in): seconds to sent."""
        agent = self.agent(_through(grant, link.url), **settings)
        agent.start()
        began = agent.drop(source)
        sent = agent.wait_sent(1, 3600)
        agent.stop()
        return sent["large.bin"] - began

    # A large file over a simulated WAN: whole, in parts, and rclone's multipart (issue 25).
    def wan(self, size: int = 2 * 1024**3) -> list[Row]:
        source = _source(self.root, size)
        whole_s, parts_s, rclone_s = [], [], []
        for _ in range(self.runs):
            with self.bucket() as (name, grant, _document):
                with wan(self.store.endpoint) as link:
                    whole_s.append(self._send_through(link, grant, source))
                with wan(self.store.endpoint) as link:
                    split = {"split_bytes": str(PART)}
                    parts_s.append(self._send_through(link, grant, source, **split))
                with wan(self.store.endpoint) as link:
                    rclone_s.append(_rclone(self.store, link.url, source, name))
        mib, parts = size / MiB, statistics.median(parts_s)
        work = f"one {mib:g} MiB file in 64 MiB parts, 4 at once, 20 ms RTT, 50 MiB/s a connection"
        said = f"{mib / parts:.0f} MiB/s"
        whole = statistics.median(whole_s)
        rows = [
            Row(work, self.store.kind, said, f"the agent, whole: {mib / whole:.0f} MiB/s",
                f"{whole / parts:.2f}x", ">= 3x"),
        ]  # fmt: skip
        if all(s is not None for s in rclone_s):
            rclone = statistics.median(s for s in rclone_s if s is not None)
            rows.append(Row(work, self.store.kind, said,
                            f"rclone, 4 streams of 64 MiB: {mib / rclone:.0f} MiB/s",
                            f"{rclone / parts:.2f}x", ">= 1.0x"))  # fmt: skip
        else:
            rows.append(Row(work, self.store.kind, said, "rclone: not installed (apt install "
                            "rclone)", "missing", ">= 1.0x"))  # fmt: skip
        return rows

    # A restart half-way through a file in parts: what it sent in all (issue 25).
    def resume(self, size: int = 2 * 1024**3) -> Row:
        source = _source(self.root, size)
        ratios = []
        for _ in range(self.runs):
            with self.bucket() as (_name, grant, _document), wan(self.store.endpoint) as link:
                agent = self.agent(_through(grant, link.url), split_bytes=str(PART))
                agent.start()
                agent.drop(source)
                half, state = size // PART // 2, agent.state
                _wait(lambda: _parts_journaled(state) >= half, 3600)  # noqa: B023  (waited for here)
                assert agent.process is not None
                agent.process.kill()  # as a power cut: nothing flushed, parts under way lost
                agent.process.wait(60)
                agent.start()
                agent.wait_sent(1, 3600)
                agent.stop()
                ratios.append(link.upstream_bytes / size)
        ratio = statistics.median(ratios)
        return Row(
            f"one {size / MiB:g} MiB file in 64 MiB parts, killed half-way, restarted",
            self.store.kind,
            f"sent {ratio:.3f}x the file's size in all",
            "the file's size",
            f"{ratio:.3f}x",
            "<= 1.1x",
        )

    # POSTBOX_BANDWIDTH_LIMIT: the rate the agent keeps to, against the limit (issue 34).
    def bandwidth(
        self,
        limit: int = 20 * MiB,
        size: int = 512 * MiB,
        count: int = 1000,
        small: int = 512 * 1024,
    ) -> list[Row]:
        """One `size` file renamed in, sent whole and in 64 MiB parts (4 at once, sharing the
        limit), and `count` files of `small` bytes renamed in one by one, each through a proxy
        that counts what goes upstream (benchmarks/wan.py: no delay, no cap): the rate on the
        wire, from its first byte to its last, against `limit`; and beside it the files' bytes
        over the time from the (first) rename to the (last) file journaled, which adds the
        store's own work on the last upload (moto reads a 512 MiB form for seconds).
        The small files are 512 KiB: at 4 KiB the 20MiB/s limit would take 5,000 files a second,
        ten times what the agent sends (per-file overhead, not the limit, would set the pace)."""
        source, files = _source(self.root, size), self._files(count, small)
        setting = {"bandwidth_limit": format_rate(limit)}
        wire: dict[str, list[float]] = {"whole": [], "parts": [], "files": []}
        stored: dict[str, list[float]] = {"whole": [], "parts": [], "files": []}
        for _ in range(self.runs):
            with self.bucket() as (_name, grant, _document):
                for how, more in (("whole", {}), ("parts", {"split_bytes": str(PART)})):
                    with wan(self.store.endpoint, rtt=0.0, rate=1e12) as link:
                        agent = self.agent(_through(grant, link.url), **setting, **more)
                        agent.start()
                        link.reset()  # after the start's probe
                        began = agent.drop(source, f"{how}.bin")
                        sent = agent.wait_sent(1, 3600)
                        agent.stop()
                        wire[how].append(link.upstream_rate())
                    stored[how].append(size / (sent[f"{how}.bin"] - began))
                with wan(self.store.endpoint, rtt=0.0, rate=1e12) as link:
                    agent = self.agent(_through(grant, link.url), **setting)
                    agent.start()
                    staging = agent.work / "staging"
                    shutil.copytree(files, staging)
                    link.reset()
                    began = time.time()
                    for entry in os.scandir(staging):
                        os.rename(entry.path, agent.watch / entry.name)
                    sent = agent.wait_sent(count, 3600)
                    agent.stop()
                    wire["files"].append(link.upstream_rate())
                stored["files"].append(count * small / (max(sent.values()) - began))
        shown = format_rate(limit)
        rows = []
        for how, work in (
            ("whole", f"one {size // MiB} MiB file, whole"),
            ("parts", f"one {size // MiB} MiB file in 64 MiB parts, 4 at once"),
            ("files", f"{count:,} x {small // 1024} KiB renamed in one by one"),
        ):
            rate, kept = statistics.median(wire[how]), statistics.median(stored[how])
            said = f"{rate / MiB:.2f} MiB/s on the wire ({kept / MiB:.2f} MiB/s rename to stored)"
            rows.append(Row(f"{work}, POSTBOX_BANDWIDTH_LIMIT={shown}", self.store.kind, said,
                            f"the limit: {limit / MiB:g} MiB/s", f"{rate / limit:.3f}x",
                            "0.95x to 1.05x on the wire"))  # fmt: skip
        return rows

    def idle(self, seconds: float) -> Row:
        with self.bucket() as (_, grant, _document):
            agent = self.agent(grant)
            agent.start()
            time.sleep(1)
            before = agent.cpu_seconds()
            time.sleep(seconds)
            used = agent.cpu_seconds() - before
            agent.stop()
        per_minute = used * 60 / seconds
        return Row(
            f"idle, {seconds:g} s",
            self.store.kind,
            f"{per_minute:.3f} CPU-s a minute",
            "-",
            "-",
            "<= 0.1 CPU-s a minute",
        )


def _form(document: dict[str, Any], key: str) -> dict[str, str]:
    fields: dict[str, str] = document["fields"]
    return {k: (key if k.lower() == "key" else v) for k, v in fields.items()}


def _post_all(
    document: dict[str, Any], payload: bytes, count: int, threads: int, tag: str
) -> float:
    """POST `count` files with plain requests sessions (one per thread); seconds taken."""
    local = threading.local()

    def post(n: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        form = _form(document, f"b/ref-{tag}-{n:04d}.bin")
        answer = session.post(document["url"], data=form, files={"file": ("f", payload)})
        answer.raise_for_status()

    began = time.monotonic()
    if threads == 1:
        for n in range(count):
            post(n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, range(count)))
    return time.monotonic() - began


def _write_steadily(watch: Path, rate: float, count: int, renamed: bool) -> dict[str, float]:
    """Write `count` 4 KiB files at `rate` a second; when each was closed (or renamed in)."""
    staging = watch.parent / "staging"
    staging.mkdir(exist_ok=True)
    payload = os.urandom(4096)
    closed: dict[str, float] = {}
    start = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        name = f"r{n:04d}.bin"
        if renamed:
            (staging / name).write_bytes(payload)
            os.rename(staging / name, watch / name)
        else:
            (watch / name).write_bytes(payload)
        closed[name] = time.time()
    return closed


class _Reference(FileSystemEventHandler):
    """The plainest agent: a watchdog handler that POSTs each closed or moved-in file from a
    pool of two threads, and notes when the store answered."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.pool = ThreadPoolExecutor(2)
        self.stored: dict[str, float] = {}
        self.local = threading.local()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent) or event.event_type == "moved":
            path = os.fsdecode(event.dest_path or event.src_path)
            if "/staging/" not in path:
                self.pool.submit(self.post, Path(path))

    def post(self, path: Path) -> None:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        form = _form(self.document, f"b/ref-{path.name}")
        answer = session.post(self.document["url"], data=form, files={"file": path.read_bytes()})
        answer.raise_for_status()
        self.stored[path.name] = time.time()


def _reference_latency(
    document: dict[str, Any], rate: float, count: int, renamed: bool
) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as tmp:
        watch = Path(tmp) / "watch"
        watch.mkdir()
        handler = _Reference(document)
        observer = InotifyObserver(generate_full_events=True)
        observer.schedule(handler, str(watch), recursive=True)
        observer.start()
        try:
            closed = _write_steadily(watch, rate, count, renamed)
            deadline = time.monotonic() + 60
            while len(handler.stored) < count and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            observer.stop()
            observer.join()
            handler.pool.shutdown()
        return [handler.stored[name] - t for name, t in closed.items()]


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _curl(document: dict[str, Any], path: Path, key: str) -> float:
    command = ["curl", "-sS", "--fail-with-body", "-o", "/dev/null"]
    for name, value in _form(document, key).items():
        command += ["--form-string", f"{name}={value}"]
    command += ["-F", f"file=@{path}", document["url"]]
    began = time.monotonic()
    subprocess.run(command, check=True, timeout=1200)
    return time.monotonic() - began


def _walk(root: Path) -> float:
    """A bare walk with an lstat of every file: the least any start-up scan must do."""
    began, stack = time.monotonic(), [str(root)]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                entry.stat(follow_symlinks=False)
    return time.monotonic() - began


def huge(
    root: Path, runs: int, size: int = 6 * 1024**3, copies: int = 8, **settings: str
) -> list[Row]:
    """One file over S3's 5 GiB POST limit on RGW, from its close to its object assembled and its
    SHA-256 checked, against `rclone copy` of the same file (4 streams of 64 MiB). Each client
    gets an RGW of its own, stopped after it, keeping its objects on disk (bluestore): the
    in-memory store took 24 GB for 6 GiB of parts and the kernel killed it."""
    source = _source(root, size)
    whole = _sha256_of(source)
    agent_s, sent_s, rclone_s, peaks = [], [], [], []
    for run in range(runs):
        with rgw_server(root / f"huge-rclone-{run}", store_bytes=2 * size, on_disk=True) as store:
            bench = Bench(store, root, 1, None)
            with bench.bucket() as (name, _grant, _document):
                rclone_s.append(_rclone(store, store.endpoint, source, name))
        with rgw_server(root / f"huge-agent-{run}", store_bytes=3 * size, on_disk=True) as store:
            bench = Bench(store, root, 1, None)
            with bench.bucket() as (name, grant, _document):
                agent = bench.agent(grant, **settings)
                agent.start()
                began = agent.drop(source, "huge.bin")
                agent.wait_sent(1, 3600)
                sent_s.append(time.time() - began)
                peaks.append(agent.status("VmHWM"))
                agent.stop()
                argv = ["assemble", "--bucket", name, "--prefix", "b/", "--copies", str(copies)]
                argv += ["--endpoint-url", store.endpoint, "--region", store.region]
                assert issuer_main(argv) == 0
                agent_s.append(time.time() - began)
                stored = bench.s3.get_object(Bucket=name, Key="b/huge.bin")["Body"]
                digest = hashlib.sha256()
                while block := stored.read(8 * MiB):
                    digest.update(block)
                if digest.hexdigest() != whole:
                    raise RuntimeError("the assembled object's SHA-256 is not the file's")
    mib, agent, sent = size / MiB, statistics.median(agent_s), statistics.median(sent_s)
    work = f"one {mib:g} MiB file, close to assembled object (SHA-256 checked)"
    said = (
        f"{agent:.1f} s ({mib / agent:.0f} MiB/s; sent in {sent:.1f} s, joined in "
        f"{agent - sent:.1f}), peak RSS {max(peaks) / MiB:.0f} MiB"
    )
    if all(s is not None for s in rclone_s):
        rclone = statistics.median(s for s in rclone_s if s is not None)
        return [Row(work, "rgw", said, f"rclone, 4 streams of 64 MiB: {rclone:.1f} s",
                    f"{rclone / agent:.2f}x", ">= 1.0x; RSS <= 100 MiB")]  # fmt: skip
    return [Row(work, "rgw", said, "rclone: not installed (apt install rclone)", "missing",
                ">= 1.0x; RSS <= 100 MiB")]  # fmt: skip


def _source(root: Path, size: int) -> Path:
    """A file of `size` random bytes under `root`, made once and kept for every run."""
    source = root / f"large-{size}.bin"
    if not source.exists():
        with source.open("wb") as out:
            block = os.urandom(MiB)
            for _ in range(size // MiB):
                out.write(block)
    return source


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _through(grant: Path, url: str) -> Path:
    """A copy of the grant whose store is at `url` (the simulated WAN before it)."""
    document = json.loads(grant.read_text())
    bucket_path = urlsplit(document["url"]).path
    document["url"] = url + bucket_path
    path = grant.with_name(f"{grant.stem}-{uuid.uuid4().hex[:6]}.json")
    path.write_text(json.dumps(document))
    path.chmod(0o600)
    return path


def _parts_journaled(state: Path) -> int:
    path = state / "journal.sqlite3"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM parts").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not done in {timeout:.0f} s")
        time.sleep(0.1)


def _rclone_env(store: Store, url: str) -> dict[str, str]:
    """rclone's remote `bench:`, the store at `url` with S3 credentials, from the environment."""
    return {
        **{k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"},  # plain HTTP here
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": store.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": store.secret_key,
        "RCLONE_CONFIG_BENCH_ENDPOINT": url,
        "RCLONE_CONFIG_BENCH_REGION": store.region,
    }


def _rclone(store: Store, url: str, source: Path, bucket: str) -> Optional[float]:
    """rclone's multipart copy of `source` (4 streams of 64 MiB, S3 credentials) to the store at
    `url`; seconds taken, None if rclone is not installed (the bench installs nothing)."""
    rclone = shutil.which("rclone")
    if rclone is None:
        return None
    env = _rclone_env(store, url)
    command = [rclone, "copyto", str(source), f"bench:{bucket}/b/rclone.bin"]
    command += ["--s3-upload-concurrency", "4", "--s3-chunk-size", "64M"]
    command += ["--s3-upload-cutoff", "64M", "--s3-no-check-bucket"]
    began = time.monotonic()
    done = subprocess.run(
        command, check=False, env=env, timeout=3600, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"rclone failed: {done.stderr.strip()[-500:]}")
    return time.monotonic() - began


def _said(count: int, seconds: float, cpu: float, peak: int) -> str:
    per_file = cpu / count * 1000
    return (
        f"{seconds:.2f} s ({count / seconds:.0f}/s, {per_file:.2f} ms CPU a file, "
        f"peak RSS {peak / MiB:.0f} MiB)"
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `command` to its end: (seconds, its CPU seconds from its rusage as a child)."""
    cpu, began = _children_cpu(), time.monotonic()
    done = subprocess.run(command, check=False, env=env, timeout=3600, capture_output=True,
                          text=True)  # fmt: skip
    took = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()[-500:]}")
    return took, _children_cpu() - cpu


def _rclone_files(store: Store, source: Path, bucket: str) -> Optional[tuple[float, float]]:
    """`rclone copy --transfers 8` of the folder `source` into the bucket (S3 credentials);
    None if rclone is not installed (the bench installs nothing: apt install rclone)."""
    rclone = shutil.which("rclone")
    if rclone is None:
        return None
    env = _rclone_env(store, store.endpoint)
    command = [rclone, "copy", str(source), f"bench:{bucket}/rclone/", "--transfers", "8"]
    return _timed([*command, "--s3-no-check-bucket"], env)


def _aws_files(store: Store, source: Path, bucket: str) -> Optional[tuple[float, float]]:
    """`aws s3 cp --recursive` of `source` into the bucket; None if the AWS CLI is missing."""
    aws = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))
    if not Path(aws).exists():
        return None
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": store.access_key,
        "AWS_SECRET_ACCESS_KEY": store.secret_key,
        "AWS_DEFAULT_REGION": store.region,
    }
    command = [aws, "s3", "cp", "--recursive", "--only-show-errors", str(source)]
    return _timed([*command, f"s3://{bucket}/aws/", "--endpoint-url", store.endpoint], env)


def _table(rows: list[Row]) -> str:
    head = ["work", "server", "agent", "reference (same run)", "agent vs reference", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lines.append(
            f"| {r.work} | {r.server} | {r.agent} | {r.reference} | {r.ratio} | {r.goal} |"
        )
    return "\n".join(lines)


def _plan(
    bench: Bench, first: bool, idle_seconds: float
) -> list[tuple[str, Callable[[], list[Row]]]]:
    """The rows for one server, by name; startup and idle on the first server only."""
    plan: list[tuple[str, Callable[[], list[Row]]]] = [
        ("files", bench.files),
        (
            "latency",
            lambda: [bench.latency(20, False), bench.latency(20, True), bench.latency(5, False)],
        ),
        ("large", lambda: [bench.large(256 * MiB), bench.large(1024 * MiB)]),
        ("peers", lambda: [*bench.peers(1000), *bench.peers(10_000)]),
        ("crowd", bench.crowd),
    ]
    plan.append(("wan", bench.wan))
    plan.append(("resume", lambda: [bench.resume()]))
    plan.append(("bandwidth", bench.bandwidth))
    plan.append(("properties", bench.properties))
    if first:
        plan.append(("startup", lambda: [bench.startup()]))
        plan.append(("idle", lambda: [bench.idle(idle_seconds)]))
    return plan


def _shown(row: Row) -> Row:
    """Print the row as it comes (stderr): a long run shows its progress."""
    print(_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument(
        "--only",
        default=",".join(r for r in ROWS if r not in ASKED),
        help=f"rows to run: {','.join(ROWS)} ({', '.join(ASKED)} only when named)",
    )
    parser.add_argument("--servers", default="moto,rgw")
    parser.add_argument("--concurrency", type=int, help="POSTBOX_CONCURRENCY for the agent")
    parser.add_argument("--sweep", help="only the files row, at each of these concurrencies")
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args(argv)
    rows_wanted = set(args.only.split(","))
    for name, value in CREDENTIALS.items():
        os.environ[name] = value
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    servers = args.servers.split(",")
    if "rgw" in servers and rgw_available():
        print(f"bench: no RGW row ({rgw_available()})", file=sys.stderr)
        servers.remove("rgw")
    rows: list[Row] = []
    if "huge" in rows_wanted and "rgw" in servers:
        with tempfile.TemporaryDirectory(prefix="postbox-bench-", dir="/var/tmp") as tmp:
            rows.extend(_shown(row) for row in huge(Path(tmp), args.runs))
    with (
        tempfile.TemporaryDirectory(prefix="postbox-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        starters: dict[str, Callable[[], Any]] = {
            "moto": lambda: moto_server(root / "moto"),
            # RGW frees deleted objects hours later (its garbage collector): room for every run.
            "rgw": lambda: rgw_server(root / "rgw", store_bytes=(4 + 5 * args.runs) * 1024**3),
        }
        for kind in servers:
            store = stack.enter_context(starters[kind]())
            if args.sweep:
                for n in args.sweep.split(","):
                    for row in Bench(store, root, args.runs, int(n)).files():
                        row.work += f", concurrency {n}"
                        rows.append(_shown(row))
                continue
            bench = Bench(store, root, args.runs, args.concurrency)
            for name, measure in _plan(bench, kind == servers[0], args.idle_seconds):
                if name in rows_wanted:
                    rows.extend(_shown(row) for row in measure())
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
