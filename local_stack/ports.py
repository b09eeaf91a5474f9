"""Loopback port helpers for the embedded services, which all bind 127.0.0.1 only."""

import socket
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that nothing listens on right now; the OS picks it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until_closed(port: int, timeout: float, host: str = LOOPBACK) -> bool:
    """Wait for a port to stop accepting connections; True if it did within timeout."""
    deadline = time.monotonic() + timeout
    while port_accepts(port, host):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
