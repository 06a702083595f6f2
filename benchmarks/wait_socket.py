"""The wait socket against clients that are not `wait` (issue 31, item 9), on a running agent:
its memory before and after a 100 MB question; a `wait` answered after deeply nested JSON and
beside a client that trickles a byte at a time; the time one poll of a `wait` over 1,000,000
files takes. Nothing here asserts (tests/agent/test_asking.py does): it prints what it saw.

    python -m benchmarks.wait_socket [--question-mib 100] [--files 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from agent.asking import ask
from benchmarks.bench import Agent, Bench
from demo.stores import CREDENTIALS, moto_server

MiB = 1024 * 1024


def question(size: int) -> bytes:
    """A well-formed question of about `size` bytes: paths of 60 characters."""
    count = size // 64
    return json.dumps(
        {"paths": [f"runs/{n % 1000:03d}/{n:012d}-" + "x" * 38 for n in range(count)]}
    ).encode()


def send(path: Path, raw: bytes, timeout: float = 300) -> tuple[int, int, float]:
    """Send `raw` as one question: bytes the agent took before it closed, bytes of its answer,
    seconds."""
    began = time.monotonic()
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(os.fspath(path))
        try:
            for start in range(0, len(raw), 1 << 16):
                client.sendall(raw[start : start + (1 << 16)])
                sent += min(1 << 16, len(raw) - start)
            client.shutdown(socket.SHUT_WR)
        except ConnectionError:
            pass
        answer = 0
        try:
            while chunk := client.recv(1 << 20):
                answer += len(chunk)
        except ConnectionError:
            pass
    return sent, answer, time.monotonic() - began


def timed_wait(path: Path, paths: list[str]) -> tuple[Optional[int], float]:
    """One poll of `wait`, as it asks: files answered (None: no answer), seconds."""
    began = time.monotonic()
    try:
        files = len(ask(path, paths, 120)["files"])
    except (OSError, ValueError):
        files = None
    return files, time.monotonic() - began


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--question-mib", type=int, default=100)
    parser.add_argument("--files", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    for name, value in CREDENTIALS.items():  # moto's, as the bench sets them
        os.environ[name] = value
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    root = Path(tempfile.mkdtemp(prefix="wait-socket-"))
    sock = Path(tempfile.mkdtemp(prefix="ws-")) / "wait.sock"
    with moto_server(root / "moto") as store, Bench(store, root, 1, None).bucket() as made:
        agent = Agent(root / "agent", made[1], wait_socket=str(sock))
        agent.start()
        try:
            time.sleep(2)
            rss = agent.status("VmRSS") / MiB
            print(f"agent RSS at rest: {rss:.0f} MiB")
            raw = question(args.question_mib * MiB)
            sent, answer, took = send(sock, raw)
            del raw
            peak = agent.status("VmHWM") / MiB
            print(
                f"a {args.question_mib} MiB question: the agent took {sent / MiB:.2f} MiB of it, "
                f"answered {answer} bytes, in {took:.2f} s; peak RSS {peak:.0f} MiB"
            )
            time.sleep(2)
            print(f"agent RSS 2 s later: {agent.status('VmRSS') / MiB:.0f} MiB")
            deep = b'{"paths": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            send(sock, deep)
            files, took = timed_wait(sock, ["a"])
            print(f"after deeply nested JSON, a wait: {files} file(s) answered in {took:.2f} s")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
                slow.connect(os.fspath(sock))
                slow.sendall(b'{"pa')
                files, took = timed_wait(sock, ["a"])
                print(
                    f"beside a trickling client, a wait: {files} file(s) answered in {took:.2f} s"
                )
            paths = [f"runs/{n % 1000:03d}/{n:012d}.csv" for n in range(args.files)]
            files, took = timed_wait(sock, paths)
            print(f"one poll of a wait over {args.files} files: {files} answered in {took:.2f} s")
            time.sleep(2)
            print(
                f"agent RSS after it: {agent.status('VmRSS') / MiB:.0f} MiB, "
                f"peak {agent.status('VmHWM') / MiB:.0f} MiB"
            )
        finally:
            agent.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
