"""What a running launch listens on, read from its own processes (``/proc``), and what its vLLM server
answers on loopback. Nothing is sent to any address other than the server's own loopback one."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp*


@dataclass(frozen=True)
class Listening:
    ip: str
    port: int
    process: str  # /proc/PID/comm: e.g. gcs_server, raylet, ray::vLLMHttpSe
    # torch.distributed's rendezvous store of the process's group: its MASTER_PORT (verl sets it per
    # worker group); torch binds that server to every interface, whatever MASTER_ADDR says.
    torch_store: bool = False

    @property
    def on_loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return address.is_loopback


def _listening_by_inode() -> dict[str, tuple[str, int]]:
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]
            raw = b"".join(struct.pack("<I", word) for word in words)
            found[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def session_members(session: int) -> list[int]:
    """Live processes whose session is ``session`` (field 6 of /proc/PID/stat)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def listening_sockets(session: int) -> set[Listening]:
    """Every TCP socket in LISTEN state held by a process of ``session``."""
    by_inode = _listening_by_inode()
    found = set()
    for pid in session_members(session):
        try:
            process = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # the process ended while we read
            continue
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(fd))
            except OSError:  # closed while we read (the listing's own fd, in this very process)
                continue
        master_port = _environment_of(pid).get("MASTER_PORT")
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in by_inode:
                ip, port = by_inode[link[8:-1]]
                found.add(Listening(ip, port, process, torch_store=str(port) == master_port))
    return found


def _environment_of(pid: int) -> dict[str, str]:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)


def _environment_value(session: int, name: str) -> str | None:
    for pid in session_members(session):
        if name in (environment := _environment_of(pid)):
            return environment[name]
    return None


def _status(url: str, key: str | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


_SERVER_LINE = re.compile(r"LLMServerManager: \['([^']+)'")


@dataclass
class SocketWatch:
    """Samples a launch's listening sockets every ``interval`` seconds while it runs, and once its vLLM
    server is up (verl logs ``LLMServerManager: ['ADDRESS:PORT']`` in ``logs/verl_*.log``), asks that
    server on loopback what it answers without the run's API key, with it, and to load a LoRA adapter."""

    session: int
    run_dir: Path
    interval: float = 0.5
    seen: set[Listening] = field(default_factory=set)
    server: str | None = None
    answers: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SocketWatch:
        self._thread = threading.Thread(target=self._watch, name="socket-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.seen |= listening_sockets(self.session)
            if self.server is None:
                self._probe_server()
            self._stop.wait(self.interval)

    def _probe_server(self) -> None:
        for log in (self.run_dir / "logs").glob("verl_*.log"):
            match = _SERVER_LINE.search(log.read_text(errors="replace"))
            if match is None:
                continue
            host, port = match.group(1).rsplit(":", 1)
            if not Listening(host.strip("[]"), int(port), "").on_loopback:
                self.server = match.group(1)  # never sent anything off loopback
                return
            base = f"http://{match.group(1)}"
            key = _environment_value(self.session, "VLLM_API_KEY")
            self.answers = {
                "models without key": _status(f"{base}/v1/models"),
                "models with key": _status(f"{base}/v1/models", key),
                "load adapter with key": _status(
                    f"{base}/v1/load_lora_adapter", key, b'{"lora_name": "x", "lora_path": "/tmp"}'
                ),
            }
            self.server = match.group(1)
            return
