"""A client of the Merlin control port (TCP 6341): ``SET``, ``GET`` and ``CMD`` requests in
MPX framing, with LiberTEM-live's method names (``MerlinControl``), for hooks that start an
acquisition themselves.

Wire format: ``MPX,<10-digit length>,<payload>`` where the length counts the comma after
the digits and the payload (protocols.md §1.2); requests ``SET,<VAR>,<value>``,
``GET,<VAR>``, ``CMD,<COMMAND>``; responses ``GET,<VAR>,<value>,<status>``,
``SET,<VAR>,<status>``, ``CMD,<COMMAND>,<status>`` with status 0 = OK (§1.3).
"""

from __future__ import annotations

import socket

__all__ = ["MerlinControl", "MerlinControlError"]

_STATUS = {1: "busy", 2: "unrecognised command", 3: "parameter out of range"}


class MerlinControlError(Exception):
    """The detector answered a request with a non-zero status, or not as the protocol
    says (the message names the request, the status and what came back)."""


class MerlinControl:
    """A connection to a Merlin's control port.

    Parameters
    ----------
    host : str
    port : int
        Control port (6341 on a Merlin).
    timeout : float, s
        For connecting and for each answer.

    Use as a context manager, or call :meth:`connect` and :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6341, timeout: float = 1.0):
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> None:
        """Connects (raises ``OSError`` naming the address when it cannot)."""
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise OSError(f"merlin control {self.host}:{self.port}: {e}") from e

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MerlinControlError(
                    f"merlin control {self.host}:{self.port} closed the connection"
                )
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _request(self, payload: str) -> list[str]:
        if self._sock is None:
            raise MerlinControlError("not connected: use `with MerlinControl(...)` or connect()")
        body = ("," + payload).encode("ascii")
        self._sock.sendall(b"MPX," + b"%010d" % len(body) + body)
        prefix = self._read(14)
        if prefix[:4] != b"MPX,":
            raise MerlinControlError(
                f"merlin control {self.host}:{self.port}: expected an MPX prefix, got {prefix!r}"
            )
        try:
            length = int(prefix[4:14])
        except ValueError:
            raise MerlinControlError(f"bad MPX length in {prefix!r}") from None
        if not 0 < length < 1 << 20:
            raise MerlinControlError(f"MPX length {length} out of range")
        rest = self._read(length)
        # Some simulators count the length without the comma after the digits (one byte
        # short): a byte already waiting that does not start a message belongs to this one.
        if not self._buf:
            try:
                self._buf = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError, TimeoutError):
                pass
        if self._buf and not self._buf.startswith(b"MPX"):
            rest, self._buf = rest + self._buf, b""
        return rest.decode("ascii", "replace").lstrip(",").split(",")

    @staticmethod
    def _check(request: str, fields: list[str]) -> None:
        try:
            status = int(fields[-1])
        except (ValueError, IndexError):
            raise MerlinControlError(f"{request}: unexpected answer {fields!r}") from None
        if status != 0:
            raise MerlinControlError(f"{request}: status {status} ({_STATUS.get(status, 'error')})")

    def set(self, param: str, value) -> None:
        """``SET,<param>,<value>``; raises :class:`MerlinControlError` on a bad status."""
        req = f"SET,{param},{value}"
        self._check(req, self._request(req))

    def get(self, param: str) -> bytes:
        """``GET,<param>``: the value as bytes (as LiberTEM-live returns it)."""
        req = f"GET,{param}"
        fields = self._request(req)
        self._check(req, fields)
        return fields[2].encode("ascii") if len(fields) >= 4 else b""

    def cmd(self, cmd: str) -> None:
        """``CMD,<cmd>`` (e.g. ``STARTACQUISITION``, ``SOFTTRIGGER``, ``STOPACQUISITION``)."""
        req = f"CMD,{cmd}"
        self._check(req, self._request(req))

    def send_command_file(self, filename) -> None:
        """Sends each non-blank line of a text file (``SET,...``/``CMD,...``) in turn."""
        with open(filename) as f:
            for line in f:
                line = line.strip()
                if line:
                    self._check(line, self._request(line))
