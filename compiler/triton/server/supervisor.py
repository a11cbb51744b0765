"""`tritonize serve`'s supervisor: it watches tritonserver and its python-backend stubs.

tritonserver 2.51 neither restarts nor reports a python-backend stub that dies (e.g. killed by
the OOM killer): its model answers 500 "Stub process ... is not healthy" after 1 s per request
while /v2/health/ready stays 200, and in-flight decoupled streams of it hang. The server runs in
explicit model-control mode with the repository API behind the key (access.py), and every
`POLL_S` the supervisor lists the server's child processes:

- a stub that died (see below) while its model is READY: the
  fronts (the HTTP guard, the gRPC relay) answer that model's requests 503 / UNAVAILABLE at once,
  also those already waiting for an answer, and end its streams already answering with an error;
  the model and the ensembles using it are unloaded, which makes Triton fail its queued and in-flight requests (in-flight streams end
  with an error event) and report it unready; then they are loaded again; each step is logged
  and counted (tritonize_model_recoveries_total);
- what counts as died: a stub that stays a zombie. Triton reaps every stub it stops itself (a
  reload or unload through the repository API, as Model Analyzer's remote mode does for each
  config it tries, and the model-level stub a python model's load starts and finalizes) with
  `waitpid` right after the stub exits (python_backend r24.10 src/stub_launcher.cc,
  `TerminateStub`), so those vanish; one killed from outside stays a zombie until its model is
  unloaded (a stub still exiting, its cmdline already gone, keeps its earlier entry until it is
  a zombie or gone). A stub that merely vanished is therefore not a death, and a zombie is checked again
  `ZOMBIE_CONFIRM_S` later so the instant between a finalized stub's exit and Triton's `waitpid`
  is not taken for one (seen: taking vanished stubs for dead ones reloaded a model after every
  reload, its own included, in an endless loop, and undid Model Analyzer's config override);
- a server that exited: restarted (--restart on-failure) with exponential backoff, counted in
  tritonize_server_restarts_total; with --restart no, serve ends with the server's error.
"""
from __future__ import annotations

import os
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...terminal import Terminal
from .availability import Availability
from .guard import counter_text
from .logs import last_line_hint
from .process import ServerError, ServerExited, TritonServer

POLL_S = 0.2
ZOMBIE_CONFIRM_S = 0.05  # far longer than Triton's exit-to-waitpid gap, short next to POLL_S
RESTART_POLICIES = ("on-failure", "no")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
STABLE_AFTER_S = 60.0  # a server up this long resets the backoff
RELOAD_ATTEMPTS = 3
STATE_ATTEMPTS = 3
STATE_TIMEOUT_S = 10.0  # one index read: 3 tries must not hold a dead model at 503 for minutes
STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    """One python-backend stub: argv is `stub MODEL_PY SHM_REGION SIZE GROWTH PARENT_PID LIB_DIR
    IPC_HANDLE INSTANCE_NAME RUNTIME_DIR` (python_backend r24.10 src/stub_launcher.cc)."""

    pid: int
    model: str
    instance: str
    zombie: bool
    exiting: bool = False  # its cmdline is gone but it is no zombie yet: known by pid only


def python_stubs(server_pid: int, repository: Path) -> dict[int, Stub]:
    """The server's python-backend stub children by pid, zombies and stubs exiting included."""
    stubs: dict[int, Stub] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != server_pid:
                continue
            zombie = fields[0] == b"Z"
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                argv = [a.decode(errors="replace") for a in cmdline.read().split(b"\0") if a]
            with open(f"/proc/{entry.name}/comm", "rb") as comm:
                name = comm.read().decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # exited while being read
        # A zombie has no cmdline left: it is known by pid from an earlier listing. Nor has a stub
        # in the middle of exiting (still R or D: a few ms, far longer for one unmapping GBs): it
        # is listed as exiting, not dead (a stub Triton stops exits so too), and keeps its earlier
        # entry in the supervisor's known stubs. Dropped, as it was, it lost a death: the zombie
        # that followed was unknown (about one kill in ten under load; the model then failed
        # every request for good).
        if zombie:
            stubs[int(entry.name)] = Stub(int(entry.name), "", "", True)
        elif not argv and STUB_NAME.startswith(name):
            stubs[int(entry.name)] = Stub(int(entry.name), "", "", False, exiting=True)
        elif argv and (argv[0].endswith(STUB_NAME) or STUB_NAME.startswith(name)):
            model = _model_of(argv[1] if len(argv) > 1 else "", repository)
            stubs[int(entry.name)] = Stub(int(entry.name), model, argv[8] if len(argv) > 8 else "?", False)
    return stubs


def _model_of(model_py: str, repository: Path) -> str:
    """'/repo/<model>/<version>/model.py' -> '<model>'."""
    try:
        return Path(model_py).resolve().relative_to(repository).parts[0]
    except (ValueError, IndexError):
        return Path(model_py).parent.parent.name


def ensemble_users(repository: Path) -> dict[str, list[str]]:
    """model -> the ensembles that use it, directly or through another ensemble."""
    users: dict[str, list[str]] = {}
    for ensemble, models in ensemble_models(repository).items():
        for model in models:
            users.setdefault(model, []).append(ensemble)
    return users


def ensemble_models(repository: Path) -> dict[str, set[str]]:
    """ensemble -> every model it runs, directly or through another ensemble."""
    from ..config import CONFIG_NAME, parse_pbtxt

    steps: dict[str, set[str]] = {}
    for config_path in sorted(repository.glob(f"*/{CONFIG_NAME}")):
        try:
            config = parse_pbtxt(config_path.read_text())
        except Exception:  # noqa: BLE001 - a config Triton could not load has no running ensemble either
            continue
        if config.platform == "ensemble":
            steps[config_path.parent.name] = {step.model_name for step in config.ensemble_scheduling.step}
    return {ensemble: _reachable(ensemble, steps) for ensemble in steps}


def _reachable(ensemble: str, steps: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(steps[ensemble])
    while todo:
        model = todo.pop()
        if model not in seen:
            seen.add(model)
            todo.extend(steps.get(model, ()))
    return seen


class Supervisor:
    """Runs in `serve`'s main thread: watch() returns only by an exception (KeyboardInterrupt on
    Ctrl-C/SIGTERM, ServerError when the server dies under --restart no)."""

    def __init__(self, server: TritonServer, availability: Availability, *, restart: str = "on-failure",
                 terminal: Terminal | None = None, poll_s: float = POLL_S):
        if restart not in RESTART_POLICIES:
            raise ValueError(f"restart must be one of {RESTART_POLICIES}, got {restart!r}")
        self.server, self.availability, self.restart, self.poll_s = server, availability, restart, poll_s
        self.terminal = terminal or Terminal()
        self.users = ensemble_users(server.repository)
        self.ensemble_models = ensemble_models(server.repository)
        self.server_restarts = 0
        self.recoveries: Counter[str] = Counter()
        # Model objects this server process may never finish unloading: Triton 2.51 keeps the
        # object of a model whose stub died "unloading" while a request it held is never
        # answered, and of an ensemble over it with every model that ensemble runs (its stuck
        # request holds them all, replaced at the reload or still served), and so waits for them at
        # a stop until its exit timeout. An upper bound (per recovery, every model it touched) and
        # their names.
        self.stuck_unloading = 0
        self.stuck_models: set[str] = set()
        self._backoff_s = BACKOFF_FIRST_S
        self._up_since = time.monotonic()

    def metrics_text(self) -> str:
        """The supervisor's counters in Prometheus text (appended to /metrics by the guard)."""
        return (counter_text("tritonize_server_restarts_total", "tritonserver restarts after it exited unexpectedly",
                             {"": self.server_restarts})
                + counter_text("tritonize_model_recoveries_total",
                               "reloads of a model after one of its python-backend stubs died",
                               {f'model="{m}"': n for m, n in sorted(self.recoveries.items())}))

    def watch(self) -> None:
        known: dict[int, Stub] = {}
        while True:
            process = self.server.process
            assert process is not None and self.server.pid is not None
            if process.poll() is not None:
                self._restart_server()
                known = {}
                continue
            stubs = python_stubs(self.server.pid, self.server.repository)
            zombies = {pid for pid, stub in stubs.items() if stub.zombie and pid in known}
            if zombies:
                # A second look confirms each zombie (not the instant between a stopped stub's exit
                # and Triton's waitpid) and gathers stubs killed together (the OOM killer, a kill
                # of a process group), which may die a few ms apart: one recovery takes seconds,
                # during which no other death is noticed.
                time.sleep(max(ZOMBIE_CONFIRM_S, self.poll_s))
                stubs = python_stubs(self.server.pid, self.server.repository)
                now = {pid for pid, stub in stubs.items() if stub.zombie and pid in known}
                confirmed, new = zombies & now, now - zombies
                if new:
                    time.sleep(ZOMBIE_CONFIRM_S)
                    stubs = python_stubs(self.server.pid, self.server.repository)
                    confirmed |= {pid for pid in new if pid in stubs and stubs[pid].zombie}
                zombies = confirmed
            dead = [known[pid] for pid in sorted(zombies)]
            known = {pid: stub if not stub.exiting else known[pid] for pid, stub in stubs.items()
                     if not stub.zombie and (not stub.exiting or pid in known)}
            if dead:
                self._recover(dead)
            time.sleep(self.poll_s)

    # -- a dead stub -------------------------------------------------------------------------------
    def _recover(self, dead: list[Stub]) -> None:
        """Fail and reload every model (and the ensembles using it) whose stub died, together: the
        fronts refuse their requests from the first moment, then they are unloaded and loaded."""
        started = time.monotonic()
        # The fronts fail the requests first, before asking tritonserver anything: the streams held
        # by the dead stub (tritonserver 2.51 never ends them) then end at once even when its API is
        # slow to answer (suspected from a run with 16 streams held, where no recovery began within
        # 15 s: the index below is the first call to the server).
        suspects = list(dict.fromkeys(stub.model for stub in dead))
        self._fail_requests(suspects)
        states = {m: self._state(m) for m in suspects}
        models = [m for m in suspects if states[m] == "READY"]
        for model in (m for m in suspects if m not in models and states[m] != "?"):  # ?: the server exited
            self.terminal.warning(f"a python-backend stub of model '{model}' died while the model is "
                                  f"{states[model]}: not reloading it")
        affected = self._affected(models)
        for name in set(self._affected(suspects)) - set(affected):  # unloaded on purpose (API, with the key)
            self.availability.recovering.pop(name, None)
        if not models:
            return
        ensembles = [e for e in affected if e not in models]
        touched = set(affected).union(*(self.ensemble_models[e] for e in ensembles))
        self.stuck_unloading += len(touched)
        self.stuck_models |= touched
        for model in models:
            instances = ", ".join(f"{stub.instance} (pid {stub.pid})" for stub in dead if stub.model == model)
            self.terminal.warning(f"python-backend stub {instances} of model '{model}' died: unloading it"
                                  + (f" and {', '.join(repr(e) for e in self.users.get(model, []))}" if
                                     self.users.get(model) else "") + " to fail its requests, then reloading")
        try:
            for name in [*ensembles, *models]:
                self.server.control("unload", name)
            failed = self._load(affected)
        except (OSError, urllib.error.URLError) as error:
            if self.server.process is not None and self.server.process.poll() is not None:
                return  # the server itself died meanwhile: watch() restarts it
            self.terminal.error(f"recovering {', '.join(affected)} failed: {error}")
            return
        finally:
            for name in affected:
                self.availability.recovering.pop(name, None)
        for model in models:
            if model not in failed:
                self.recoveries[model] += 1
                self.terminal.success(f"model '{model}' serves again ({time.monotonic() - started:.1f} s after "
                                      "its stub was found dead)")

    def _affected(self, models: list[str]) -> list[str]:
        """The models and the ensembles using them."""
        return list(dict.fromkeys([*models, *(e for m in models for e in self.users.get(m, []))]))

    def _fail_requests(self, models: list[str]) -> None:
        affected = self._affected(models)
        self.availability.recovering.update({name: f"model '{name}' is being reloaded: a python-backend stub it runs "
                                                   "on died; try again in a few seconds" for name in affected})
        self.availability.fail_waiting(affected)

    def _load(self, names: list[str]) -> set[str]:
        """Load each model (retrying); the names that would not load (logged)."""
        failed = set()
        for name in names:
            for attempt in range(1, RELOAD_ATTEMPTS + 1):
                try:
                    self.server.control("load", name)
                    break
                except urllib.error.HTTPError as error:
                    detail = error.read().decode(errors="replace")[:300]
                    if attempt == RELOAD_ATTEMPTS:
                        self.terminal.error(f"model '{name}' did not load again ({detail}); it stays unloaded "
                                            f"(see {self.server.log_path})")
                        failed.add(name)
                    else:
                        self.terminal.warning(f"reloading '{name}' failed ({detail}); retrying")
                        time.sleep(attempt)
        return failed

    def _state(self, model: str) -> str:
        """The model's state in the repository index; READY when the index cannot be read
        (STATE_ATTEMPTS tries): a dead stub's model is then recovered rather than left failing
        every request (Triton's API can be slow to answer while the dead stub holds requests)."""
        for attempt in range(1, STATE_ATTEMPTS + 1):
            try:
                states = [str(entry.get("state") or "UNAVAILABLE")
                          for entry in self.server.repository_index(timeout_s=STATE_TIMEOUT_S)
                          if entry.get("name") == model]
                return "READY" if "READY" in states else states[0] if states else "UNAVAILABLE"
            except ServerExited:
                return "?"  # watch() restarts it
            except (OSError, ValueError) as error:
                if attempt == STATE_ATTEMPTS:
                    self.terminal.warning(f"the repository index did not answer ({error}); "
                                          f"taking model '{model}' for READY")
                else:
                    time.sleep(0.5 * attempt)
        return "READY"

    # -- a dead server ------------------------------------------------------------------------------
    def _restart_server(self) -> None:
        code = self.server.stop()  # reaps it and any stub it left behind
        self.stuck_unloading, self.stuck_models = 0, set()
        hint = last_line_hint(self.server.log_text())
        if self.restart == "no":
            raise ServerError(f"tritonserver exited unexpectedly with code {code}{hint}",
                              fix=f"see the server log {self.server.log_path}; --restart on-failure restarts it")
        if time.monotonic() - self._up_since > STABLE_AFTER_S:
            self._backoff_s = BACKOFF_FIRST_S
        self.terminal.error(f"tritonserver exited unexpectedly with code {code}{hint}; "
                            f"restarting in {self._backoff_s:g} s")
        # 503 / UNAVAILABLE for everything until the new server is ready and counted
        self.availability.restarting = "tritonserver exited unexpectedly and is restarting: try again in a few seconds"
        while True:
            time.sleep(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            try:
                self.server.start()
                self.server.wait_ready()
            except ServerError as error:
                self.server.stop()
                self.terminal.error(f"restart failed: {error.one_line()}; next try in {self._backoff_s:g} s")
                continue
            break
        self.server_restarts += 1
        self._up_since = time.monotonic()
        self.availability.restarting = None
        self.terminal.success(f"tritonserver restarted (restart {self.server_restarts})")
