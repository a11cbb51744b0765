"""Stopping a CPU-engine generation whose client went away, from another model of the ensemble.

tritonserver 2.51 does not cancel the requests an ensemble has already handed to its steps when
the ensemble's own request is cancelled (a gRPC client cancelling its stream, an HTTP client
leaving generate_stream): the engine's request keeps `is_cancelled()` false and would generate to
its last token (seen with this repository's tiny LLM: 45 more tokens after the cancel). The step
requests the ensemble creates *after* the cancellation do carry it, and in a stream the
postprocessing runs once per engine response. So the engine gives each request a key (its
datagram socket's address, a number and a random part), sends it with every response (output
`cancel_key`), and the postprocessing (or the BLS model) that finds its own request cancelled
sends the key back: the engine drops that request before its next decoding step.

This file ships next to the engine's, the postprocessing's and the BLS model's model.py.
"""
import contextlib
import itertools
import os
import secrets
import socket

KEY_SEPARATOR = "#"


class Listener:
    """The engine's end: an abstract-namespace datagram socket (no file; gone with the process)."""

    def __init__(self):
        self.address = f"tritonize-llm-cancel-{os.getpid()}-{secrets.token_hex(4)}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.address)
        self.socket.setblocking(False)
        self._numbers = itertools.count(1)

    def new_key(self):
        return f"{self.address}{KEY_SEPARATOR}{next(self._numbers)}-{secrets.token_hex(8)}"

    def received(self):
        """The keys sent since the last call (never blocks)."""
        keys = set()
        while True:
            try:
                keys.add(self.socket.recv(512).decode("ascii", "replace"))
            except BlockingIOError:
                return keys

    def close(self):
        self.socket.close()


def request_cancel(key):
    """Ask the engine that issued key to stop that generation; a no-op if it is gone."""
    address = key.partition(KEY_SEPARATOR)[0]
    if not address:
        return
    # OSError: the engine was unloaded, nothing left to stop.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender, contextlib.suppress(OSError):
        sender.sendto(key.encode("ascii"), "\0" + address)
