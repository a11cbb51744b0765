"""Which of tritonserver's APIs need a key, and where the key comes from.

Triton 2.51 restricts API groups behind a request header: `--http-restricted-api=APIS:HEADER=VALUE`
and, for gRPC, `--grpc-restricted-protocol=APIS:HEADER=VALUE` (the gRPC flag is not spelled
`--grpc-restricted-api` in 2.51: its --help rejects that; see triton-inference-server/server r24.10
docs/customization_guide/inference_protocols.md, "Limit Endpoint Access"). A client without the
header gets 403 / UNAVAILABLE for those groups. The operator's key never appears on a command
line: it is read from a file or an environment variable, or generated for the run and written to a
mode-0600 file.

tritonserver 2.51 takes the setting only in its argv (no option file, no environment variable:
triton-inference-server/server r24.10 src/command_line_parser.cc), readable by every local user in
/proc/PID/cmdline. So `serve` gives tritonserver a key of its own, fresh for each run, on private
loopback ports, and its fronts (the HTTP guard, the gRPC relay) swap the operator's key for it
(KeyExchange): the operator's key is never in any process's argv. The server's key is: a local user
who reads it can use the restricted APIs of this run's private ports (run serve as its own user).
"""
from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ...errors import TritonizeError

KEY_ENV = "TRITONIZE_API_KEY"
KEY_HEADER = "triton-admin-key"  # lowercase: gRPC metadata keys must be; the name deploy/ uses too
# Everything that changes the server or reads its memory: loading code (model-repository: load,
# unload, index), shared-memory registration, log level and trace settings. Inference, health,
# metadata, model config and statistics stay open: clients, perf_analyzer and probes need them.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


@dataclass(frozen=True)
class RestrictedApis:
    """The key that unlocks the restricted API groups, and the tritonserver flags that set it."""

    key: str
    apis: tuple[str, ...] = RESTRICTED_APIS
    header: str = KEY_HEADER

    def server_args(self) -> list[str]:
        setting = f"{','.join(self.apis)}:{self.header}={self.key}"
        return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]

    @property
    def headers(self) -> dict[str, str]:
        """What an HTTP client sends to use a restricted API."""
        return {self.header: self.key}

    @property
    def grpc_headers(self) -> dict[str, str]:
        """What a gRPC client sends: Triton 2.51 expects the header prefixed with
        `triton-grpc-protocol-` (seen: it answers "expecting header 'triton-grpc-protocol-...'")."""
        return {f"triton-grpc-protocol-{self.header}": self.key}

    def redact(self, text: str) -> str:
        return text.replace(self.key, "***")


@dataclass(frozen=True)
class KeyExchange:
    """The operator's key, checked by the fronts, and the server's own key they forward instead."""

    operator_key: str
    server: RestrictedApis

    def matches(self, value: str | bytes) -> bool:
        given = value.encode() if isinstance(value, str) else value
        return hmac.compare_digest(given.strip(), self.operator_key.encode())

    @property
    def http_header(self) -> str:
        return self.server.header

    @property
    def grpc_header(self) -> str:
        return next(iter(self.server.grpc_headers))


def server_key() -> str:
    """A fresh key for one tritonserver process."""
    return secrets.token_urlsafe(24)


def resolve_key(key_file: Path | None, generated_at: Path) -> tuple[str, str]:
    """(key, where it came from): --api-key-file, else $TRITONIZE_API_KEY, else a fresh random key
    written to `generated_at` (mode 0600) so an operator can read it."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise TritonizeError(f"cannot read the API key file: {exc.strerror}", file=key_file,
                                 fix="pass a readable file holding the key with --api-key-file") from None
        where = str(key_file)
    elif os.environ.get(KEY_ENV, "").strip():
        key, where = os.environ[KEY_ENV].strip(), f"${KEY_ENV}"
    else:
        key = secrets.token_urlsafe(24)
        generated_at.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(generated_at, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        return key, str(generated_at)
    if not key or any(c in key for c in ",:= \t\n") or not key.isprintable():
        raise TritonizeError(f"the API key from {where} is empty or holds one of , : = or whitespace",
                             file=key_file, fix="use letters, digits, - and _ only (e.g. `openssl rand -hex 24`)")
    return key, where
