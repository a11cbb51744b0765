"""Emission: write ModelArtifacts into a staging directory, then swap it into place.

Guarantees, whatever happens to the build (an error, Ctrl-C, kill -9, a full disk):
- the output path is always a complete repository (the previous one or the new one), never half
  of one and never missing: the swap is one atomic `renameat2(RENAME_EXCHANGE)`;
- one build at a time writes an output: `output_lock` (flock on `.NAME.lock` next to it); a
  second build waits for the first, or gives up after a timeout naming the holder's pid;
- what a killed build leaves (`.NAME.staging-*`, `.NAME.old-*` next to the output, and
  `tritonize-work-*` in the temporary directory) is removed by the next build, once no live
  build owns it;
- a directory that tritonize did not build is never overwritten.

Why an exchange and not a `repo -> .repo.generation-N` symlink flip: with the exchange the output
stays a plain directory, so nothing that holds the path changes behaviour (the committed golden
model_repo/ stays a directory in git, `docker -v repo:/models` and `rm -rf repo` keep meaning what
they meant, `tritonize serve REPO` and `validate REPO` see no link), and a running tritonserver
that re-reads the path sees the new models. Filesystems without RENAME_EXCHANGE (it needs Linux
3.15+; NFS and some FUSE filesystems refuse it) fall back to two renames, and the next build puts
the previous repository back if a kill landed between them.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .artifacts import ModelArtifact
from .errors import TritonizeError
from .manifest import MANIFEST_NAME, Manifest, model_files
from .terminal import Terminal
from .triton.config import CONFIG_NAME, to_pbtxt

# Default wait for another build of the same output (`tritonize build --lock-timeout`).
LOCK_TIMEOUT_S = 600.0
WORK_PREFIX = "tritonize-work-"
_OWNER_LOCK = ".owner.lock"  # inside a work directory: flocked by the build that uses it
# linux/include/uapi/linux/fs.h: #define RENAME_EXCHANGE (1 << 1); AT_FDCWD from linux/fcntl.h.
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def resolve_output(out: Path) -> Path:
    try:
        return Path(out).resolve()
    except RuntimeError:  # Python 3.11's Path.resolve reports a symlink loop as RuntimeError
        raise TritonizeError("the output path is a loop of symbolic links", file=out,
                             fix="remove the symbolic link loop, or choose another output path with -o") from None


def check_output_dir(out: Path) -> None:
    """Refuse to replace a non-empty directory that tritonize did not build."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).exists())):
        raise TritonizeError(f"output directory {out} exists and was not built by tritonize (no {MANIFEST_NAME})",
                             loc=("repository",),
                             fix="choose another output with -o, or remove that directory first")


def make_parent(out: Path) -> None:
    """Create the output's parent directories; a filesystem that refuses (procfs) is named."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError as exc:
        raise TritonizeError(f"cannot create directories in {Path(exc.filename or out.parent).parent}", file=out,
                             fix="choose an output directory on a regular filesystem (-o)") from None


def pause_point(name: str) -> None:
    """Test hook for the crash tests: with TRITONIZE_TEST_PAUSE_AT=name the build stops here (after
    touching TRITONIZE_TEST_PAUSE_MARKER, if set) until it is killed."""
    if os.environ.get("TRITONIZE_TEST_PAUSE_AT") != name:
        return
    marker = os.environ.get("TRITONIZE_TEST_PAUSE_MARKER")
    if marker:
        Path(marker).write_text(f"{os.getpid()}\n")
    time.sleep(3600)


# -- the output lock ----------------------------------------------------------------------------


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: Path, *, timeout: float = LOCK_TIMEOUT_S, terminal: Terminal | None = None) -> Iterator[None]:
    """Hold the build lock of `out` (its parent must exist). The lock file names the holder's pid;
    it is removed on release, so a waiter that locked a removed file tries again (inode check).
    The kernel drops a flock when its holder dies, so a killed build never blocks the next one."""
    path = lock_path(out)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory exists, yet refuses new files (procfs, sysfs)
            raise TritonizeError(f"cannot create files in {out.parent}", file=out,
                                 fix="choose an output directory on a regular filesystem (-o)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() >= deadline:
                raise TritonizeError(f"another build (pid {holder}) is writing this repository and still holds "
                                     f"{path} after {timeout:g} s", file=out,
                                     fix=f"wait for pid {holder} to finish (or stop it), or raise --lock-timeout"
                                     ) from None
            if not told and terminal is not None:
                terminal.warning(f"waiting for another build of {out} (pid {holder}) to finish")
                told = True
            time.sleep(0.1)
            continue
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed that file on release: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# -- leftovers of killed builds -------------------------------------------------------------------


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what killed builds left; call with the output lock held. Next to the output nothing
    can belong to a live build then (only the lock holder makes those); a work directory in the
    temporary directory is removed only once the build that flocked it is dead. If a kill landed
    between the two renames of the fallback swap, the previous repository is put back first.
    Returns what was removed."""
    retired = sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*"))
    if not out.exists() and retired:
        os.rename(retired[-1], out)
        retired = retired[:-1]
    removed = [*sorted(out.parent.glob(f".{glob.escape(out.name)}.staging-*")), *retired]
    removed += [path for path in sorted(Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*")) if _abandoned(path)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _abandoned(work: Path) -> bool:
    """A work directory whose build is dead: its owner lock can be taken (or, without one, the pid
    in its name is gone). Other users' directories are never touched."""
    try:
        if work.is_symlink() or not work.is_dir() or work.stat().st_uid != os.getuid():
            return False
        fd = os.open(work / _OWNER_LOCK, os.O_RDWR)
    except FileNotFoundError:
        match = re.match(re.escape(WORK_PREFIX) + r"(\d+)-", work.name)
        return match is not None and not _alive(int(match.group(1)))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """Scratch space for one build, in the temporary directory, flocked while the build lives."""
    path = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
    fd = os.open(path / _OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


# -- writing and swapping -------------------------------------------------------------------------


def write_repository(artifacts: Iterable[ModelArtifact], out: Path, manifest: Manifest, *,
                     extra_files: dict[str, str] | None = None) -> None:
    """Write the repository into a staging directory next to `out` and swap it in. The manifest's
    `files` of every model are filled in from what was written. Call with the output lock held."""
    check_output_dir(out)
    staging = _staging(out)
    try:
        for artifact in artifacts:
            _write_model(staging, artifact)
            manifest.models[artifact.name].files = model_files(staging / artifact.name)
        pause_point("staging")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        # The manifest is written last: a staging directory with a manifest is complete.
        (staging / MANIFEST_NAME).write_text(manifest.dumps())
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_repository(out: Path, manifest: Manifest, *, add: dict[str, Path]) -> None:
    """Change a built repository through the same staged swap as a build: a copy of it (files
    hard-linked where the filesystem allows, so big checkpoints are not copied), with the
    directories in `add` (relative path -> directory to copy there) replaced and the new manifest
    (its `files` recomputed). Staged files are only ever unlinked and rewritten, never edited in
    place (a hard link would carry the edit into the live repository). Call with the output lock held."""
    check_output_dir(out)
    staging = _staging(out)
    staging.rmdir()
    try:
        shutil.copytree(out, staging, copy_function=_link_or_copy, symlinks=True)
        for relative, source in add.items():
            shutil.rmtree(staging / relative, ignore_errors=True)
            shutil.copytree(source, staging / relative)
        for name, entry in manifest.models.items():
            if (staging / name).is_dir():
                entry.files = model_files(staging / name)
        (staging / MANIFEST_NAME).unlink()
        (staging / MANIFEST_NAME).write_text(manifest.dumps())
        _swap(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _staging(out: Path) -> Path:
    make_parent(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_model(root: Path, artifact: ModelArtifact) -> None:
    model_dir = root / artifact.name
    model_dir.mkdir()
    (model_dir / CONFIG_NAME).write_text(to_pbtxt(artifact.config))
    for relative, content in sorted(artifact.files.items()):
        target = model_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif content.is_dir():
            shutil.copytree(content, target)
        else:
            shutil.copyfile(content, target)
    # Ensembles and models whose files live elsewhere still need a version directory.
    (model_dir / str(artifact.version)).mkdir(exist_ok=True)


def _swap(staging: Path, out: Path) -> None:
    """Put the complete staging directory at `out` atomically; the previous repository is removed."""
    pause_point("swap")
    if not out.exists():
        os.rename(staging, out)  # nothing (or an empty directory) was there: one rename is atomic
        return
    if _exchange(staging, out):
        pause_point("swapped")
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous repository
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    retired.rmdir()
    os.rename(out, retired)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(a, b, RENAME_EXCHANGE): swap two paths in one step. False where the system or the
    filesystem has no such operation (the caller falls back to two renames)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def tree_hash(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """One hash over files and directory trees (contents and relative names) plus extra strings."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            name = file.relative_to(path).as_posix() if path.is_dir() else file.name
            digest.update(name.encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return "sha256:" + digest.hexdigest()
