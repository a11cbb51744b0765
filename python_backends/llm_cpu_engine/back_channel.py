"""The CPU engine's back channel: the ensemble's later steps tell it that a generation's client
went away (cancellations), and how far they have handled its stream (acknowledgements).

Cancellations.

tritonserver 2.51 does not cancel the requests an ensemble has already handed to its steps when
the ensemble's own request is cancelled (a gRPC client cancelling its stream, an HTTP client
leaving generate_stream): the engine's request keeps `is_cancelled()` false and would generate to
its last token (seen with this repository's tiny LLM: 45 more tokens after the cancel). The step
requests the ensemble creates *after* the cancellation do carry it, and in a stream the
postprocessing runs once per engine response. So the engine gives each request a key (its
datagram socket's address, a number and a random part), sends it with every response (output
`cancel_key`), and the postprocessing (or the BLS model) that finds its own request cancelled
sends the key back: the engine drops that request before its next decoding step.

Acknowledgements and pacing, for the clients that ask. Through the ensemble each streamed response
costs a postprocessing call and the server's handling of it: ~0.9 ms of CPU together (measured
with 8 streams on 2 cores), taken from the engine's forward passes on a small machine, so one
response per token streamed at half the rate of a whole answer. The postprocessing acknowledges
each response it has handled (the key and the stream's token count). A stream whose client set the
request parameter MULTI_TOKEN_PARAMETER true, and which is acknowledged (it goes through the
postprocessing: the ensemble, or the BLS model), is paced: its next response waits while
STREAM_WINDOW of its responses are unacknowledged (the postprocessing is behind) and until the
streams together send at most RESPONSES_PER_S_PER_CPU responses a second per CPU (but a stream one
at least every MAX_STREAM_INTERVAL_S, so it still reads as a stream). The tokens generated
meanwhile go out together in one response (a response carries every token so far and its
stream_offset says how many earlier ones carried, so the texts still join to the one-shot text). A
stream's first response and its last are never held. Every other stream gets one response per
token, as upstream's engine streams: clients of upstream's ensemble count responses as tokens
(llama-index's NvidiaTriton reads max_tokens - 1 responses and stops), so several tokens in one
response would change their answer. Request parameters reach an ensemble's steps (checked with
tritonserver 2.51); the BLS model passes them on.

This file ships next to the engine's, the postprocessing's and the BLS model's model.py.
"""
import contextlib
import itertools
import json
import os
import secrets
import socket
import threading

# The request parameter (a bool) with which a client says it counts tokens, not responses.
MULTI_TOKEN_PARAMETER = "multi_token_responses"
KEY_SEPARATOR = "#"
ACK_SEPARATOR = "="  # an acknowledgement: key=tokens (a key holds neither "=" nor spaces)
# is_cancelled() is a round trip to the server (0.05-0.9 ms measured): the engine and the
# postprocessing ask it at most this often for each stream.
CHECK_INTERVAL_S = 0.02
# Unacknowledged responses a stream may have before the engine holds its next one. Two keeps the
# postprocessing busy with one response while the next is on its way.
STREAM_WINDOW = 2
# ~0.9 ms of CPU a response: 100 a second take a tenth of a CPU. (200 streamed the demo's 4
# streams at 0.73 of the engine's own rate on 2 CPUs, 100 at 0.81-0.86: perf/README.md.) With 4 streams
# on 2 CPUs a stream's responses come every 20 ms, ~5 tokens each.
RESPONSES_PER_S_PER_CPU = 100
MAX_STREAM_INTERVAL_S = 0.1
# An unacknowledged response older than this holds its stream back no longer (its acknowledgement
# was lost: the engine's queue stayed full past the sender's timeout).
ACK_WAIT_S = 0.25


def multi_token(parameters):
    """Whether a request's parameters (request.parameters(), JSON) take multi-token responses.
    ValueError names the parameter when its value is not a bool."""
    value = json.loads(parameters or "{}").get(MULTI_TOKEN_PARAMETER, False)
    if not isinstance(value, bool):
        raise ValueError(f"request parameter {MULTI_TOKEN_PARAMETER} must be a bool, got {value!r}")
    return value


def stream_interval(streams):
    """The least time between two responses of one paced stream, with `streams` of them running."""
    return min(max(streams, 1) / (RESPONSES_PER_S_PER_CPU * len(os.sched_getaffinity(0))), MAX_STREAM_INTERVAL_S)


class Listener:
    """The engine's end: an abstract-namespace datagram socket (no file; gone with the process),
    read by its own thread. A Unix datagram socket queues only net.unix.max_dgram_qlen messages
    (10 by default) and a sender waits while it is full: read once a decoding step, a burst of
    acknowledgements would hold up the postprocessing."""

    def __init__(self):
        self.address = f"tritonize-llm-cancel-{os.getpid()}-{secrets.token_hex(4)}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.address)
        self.socket.settimeout(0.2)  # how long close() may wait for the reading thread
        self._numbers = itertools.count(1)
        self._cancelled = set()
        # Live key -> the most tokens a handled response of its stream carried (0: none yet). Read
        # at any time: the engine decides on a stream's next response with the latest figure.
        self._acknowledged = {}
        self._lock = threading.Lock()
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def new_key(self):
        key = f"{self.address}{KEY_SEPARATOR}{next(self._numbers)}-{secrets.token_hex(8)}"
        self._acknowledged[key] = 0
        return key

    def forget(self, key):
        """key's generation ended: messages for it are dropped from now on."""
        self._acknowledged.pop(key, None)

    def acknowledged(self, key):
        """The most tokens a handled response of key's stream carried; 0 if none was handled."""
        return self._acknowledged.get(key, 0)

    def cancelled(self):
        """The keys sent back since the last call (never blocks)."""
        with self._lock:
            keys, self._cancelled = self._cancelled, set()
        return keys

    def _read(self):
        while self._open:
            try:
                message = self.socket.recv(512).decode("ascii", "replace")
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            key, separator, tokens = message.partition(ACK_SEPARATOR)
            if key not in self._acknowledged:
                continue  # an ended generation's, or not one of this engine's keys
            if not separator:
                with self._lock:
                    self._cancelled.add(key)
            elif tokens.isdigit():
                self._acknowledged[key] = max(int(tokens), self._acknowledged.get(key, 0))

    def close(self):
        self._open = False
        self._reader.join(timeout=1)
        self.socket.close()


_sender = None  # one unbound socket for every message this process sends


def _send(key, message):
    global _sender
    address = key.partition(KEY_SEPARATOR)[0]
    if not address:
        return
    if _sender is None:
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.settimeout(0.1)  # the engine's queue full that long: it is stuck, go on without it
    # OSError: the engine was unloaded (or timed out, above): nothing left to tell.
    with contextlib.suppress(OSError):
        _sender.sendto(message.encode("ascii"), "\0" + address)


def request_cancel(key):
    """Ask the engine that issued key to stop that generation; a no-op if it is gone."""
    _send(key, key)


def acknowledge(key, tokens):
    """Tell the engine that issued key that a response of that stream carrying tokens was handled."""
    _send(key, f"{key}{ACK_SEPARATOR}{tokens}")
