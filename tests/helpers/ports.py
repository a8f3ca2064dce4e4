"""Local ports: the server processes the tests start, and ports where nothing answers."""

import queue
import re
import socket
import subprocess
import sys
import threading

ADDRESS = re.compile(r"(?:Running|listening) on (?:http://)?127\.0\.0\.1:(\d+)")


def free_port() -> int:
    """A port nothing listens on now: for a server that is meant to be unreachable. A server the tests start
    binds port 0 instead (``start_server``), since another process may take this one before it binds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(argv: list[str], what: str, timeout: float = 30) -> tuple[subprocess.Popen, int]:
    """Start a server process and return it with its port, once it prints the address it listens on
    ("Running on http://127.0.0.1:PORT", as moto's server does; "listening on 127.0.0.1:PORT", as
    tcp_proxy.py does). Given port 0, it binds a port no other process holds; given a port that is taken, it
    exits and this fails, naming ``what``. Its output is read to the end, so that it never blocks on a full pipe."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            if match := ADDRESS.search(line):
                ports.put(int(match.group(1)))
        ports.put(None)  # the process ended

    threading.Thread(target=read, daemon=True).start()
    try:
        port = ports.get(timeout=timeout)
    except queue.Empty:
        port = None
    if port is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"{what} did not start")
    return process, port


def start_moto() -> tuple[subprocess.Popen, int]:
    """moto's S3-compatible server in a process of its own on a port of its choosing; returns it and the port."""
    return start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], "the moto S3 server")


def connection_attempts(monkeypatch, port: int) -> list[int]:
    """The connections this process opens to 127.0.0.1:``port`` from now on, one entry each, as urllib3
    (botocore's HTTP layer) opens them."""
    import urllib3.util.connection

    attempts = []
    connect = urllib3.util.connection.create_connection

    def counted(address, *args, **kwargs):
        if address[1] == port:
            attempts.append(port)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counted)
    return attempts
