"""A TCP proxy in front of the S3 server that fails the first N connections with `503 Slow Down`.

Injects the transient failure a busy or restarting store gives, without touching the client: the client
sees a real HTTP 503 and must retry. Later connections are piped to the server byte for byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
_BODY = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Slow down</Message></Error>"


class FlakyProxy:
    def __init__(self, target_port: int, failures: int) -> None:
        self.target_port = target_port
        self.failures_left = failures
        self.failed = 0  # connections answered with 503 so far
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            fail = self.failures_left > 0
            self.failures_left -= fail
        if fail:
            self._answer_slow_down(client)
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def _answer_slow_down(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := client.recv(65536)):
                head += chunk
            # Read the body too, so the client is not reset before it sees the answer.
            headers, _, body = head.partition(b"\r\n\r\n")
            lengths = [
                line.split(b":")[1] for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length:")
            ]
            length, received = int(lengths[0]) if lengths else 0, len(body)
            while received < length and (chunk := client.recv(65536)):
                received += len(chunk)
            client.sendall(_SLOW_DOWN % (len(_BODY), _BODY))
            with self._lock:
                self.failed += 1


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until either side closes."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):  # already closed by the other direction
                sock.shutdown(socket.SHUT_RDWR)
