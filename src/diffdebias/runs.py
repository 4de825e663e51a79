"""Run directories, cached stages, atomic files and seeding.

A run directory holds one experiment: ``config.yaml`` and one folder per stage. A stage is finished when its ``DONE``
file holds the hash of its config and inputs; a stage whose hash changed starts afresh, one without ``DONE`` resumes
from whatever checkpoint it left. Every file goes through a temporary name and a rename, so a killed process leaves
the last good state.

Ownership: the toolkit deletes or replaces only what it made. A run directory carries :data:`RUN_MARKER`, a stage
folder its ``KEY`` file; anything else where a run or a stage must go is an :class:`OwnershipError` and is left as
it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; shards must not share a stage there
    fcntl = None

import torch
from safetensors.torch import load_file, save_file

from .devices import barrier, is_main, process_group, share
from .keys import NOTHING, Reads

RUN_MARKER = ".diffdebias-run"  # in every run directory the toolkit made: it may write and delete stages there


class OwnershipError(ValueError):
    """A file or folder the toolkit did not make stands where it must write; nothing was touched."""


class NonFiniteLossError(RuntimeError):
    """Training produced a loss that is NaN or infinite; the stage stopped and nothing was marked done."""


# ----------------------------------------------------------------------------------------------------------- files


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _process_umask()  # read once: os.umask can only be read by setting it, which is not thread-safe
TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what atomic_path names its temporary files


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds. The file gets the
    permissions the umask gives a new file (mkstemp's are 0600), so a group can read reports and share a cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # after the block: a writer may have made the file anew
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_json(obj: Any, undefined: dict[str, str] | None = None, prefix: str = "") -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has no NaN); the dotted key of each is
    added to ``undefined`` when given."""
    if isinstance(obj, float) and not math.isfinite(obj):
        if undefined is not None:
            undefined[prefix] = "nan" if math.isnan(obj) else "inf"
        return None
    if isinstance(obj, Mapping):
        return {k: finite_json(v, undefined, f"{prefix}.{k}" if prefix else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, undefined, f"{prefix}[{i}]") for i, v in enumerate(obj)]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: a NaN or infinite number is written as null."""
    write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None):
    """Save tensors as safetensors (never pickle); ``meta`` is stored as JSON in the header."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta or {})})


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    return load_file(str(path)), meta


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def exclusive(lock: Path, on_wait: Callable[[], None] = lambda: None):
    """Hold an advisory lock on ``lock`` for the block, calling ``on_wait`` once if another process holds it. The
    kernel drops the lock when its holder dies, so a killed run never leaves a stage locked."""
    if fcntl is None:
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------- nested state dicts


def flatten_state(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested state dict (model, optimizer, ...) into flat tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            t, r = flatten_state(value, name + "/")
            tensors.update(t)
            rest.update(r)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                t, r = flatten_state(v, f"{name}/#{i}/")
                tensors.update(t)
                rest.update(r)
            rest[f"{name}/#len"] = len(value)
        else:
            rest[name] = value
    return tensors, rest


def unflatten_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_state`. Integer-looking keys of optimizer state become ints again."""
    root: dict[str, Any] = {}
    for name, value in list(tensors.items()) + list(rest.items()):
        parts = name.split("/")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def fix(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "#len" in node:
            return [fix(node[f"#{i}"]) for i in range(node["#len"])]
        out = {}
        for k, v in node.items():
            out[int(k) if k.lstrip("-").isdigit() else k] = fix(v)
        return out

    return fix(root)


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save a nested training state (model, optimizer, counters) atomically as one safetensors file."""
    tensors, rest = flatten_state(state)
    save_tensors(path, tensors, rest)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    tensors, rest = load_tensors(path)
    return unflatten_state(tensors, rest)


# ------------------------------------------------------------------------------------------------------- seeding


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any JSON-able parts (run seed, stage name, epoch...)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: Any) -> torch.Generator:
    """A CPU generator seeded from ``parts``: one per stage (and per epoch), never a global reseed."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def config_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------------------- stages


def set_aside(path: Path, why: str, log: Callable[[str], None] = print) -> Path:
    """Rename a file the toolkit cannot use (a truncated checkpoint) to ``NAME.corrupt-TIME``: kept for a look, out
    of the way of the rerun."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    log(f"{path} cannot be read ({why}); set aside as {aside.name}, computing it again")
    return aside


def load_resumable(path: Path, load: Callable[[Path], Any], log: Callable[[str], None] = print) -> Any:
    """``load(path)`` for a checkpoint or a finished part of an unfinished stage; None when there is none, or when it
    cannot be read, in which case it is set aside and the work it held is done again."""
    if not path.exists():
        return None
    try:
        return load(path)
    except Exception as e:  # a truncated or foreign file: safetensors, JSON and shape errors alike
        set_aside(path, f"{type(e).__name__}: {e}".splitlines()[0][:200], log)
        return None


def load_resumable_shared(path: Path, load: Callable[[Path], Any], log: Callable[[str], None] = print,
                          everywhere: bool = True) -> Any:
    """:func:`load_resumable` in a stage that every process computes (``everywhere``): the main process reads first
    and alone sets a broken file aside; the others then read the same file only if it could, and all go on together
    (nobody writes the next checkpoint before everyone has read this one). Otherwise plain :func:`load_resumable`."""
    if not everywhere or process_group() is None:
        return load_resumable(path, load, log)
    state = load_resumable(path, load, log) if is_main() else None
    if share(state is not None) and not is_main():
        state = load(path)
    barrier()
    return state


def check_finite(value: float, stage: Stage, where: str, hint: str) -> None:
    """Stop a stage whose loss is NaN or infinite instead of saving broken weights as a result."""
    if not math.isfinite(value):
        raise NonFiniteLossError(f"stage '{stage.name}': the training loss is {value} at {where}; {hint}. Nothing "
                                 f"was marked done and the last checkpoint in {stage.dir} is kept")


def _is_stage_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / "KEY").is_file()


@dataclass
class Stage:
    """One cached step of a run. ``key`` hashes the stage's config and its inputs' keys."""

    name: str
    dir: Path
    key: str
    seed: int
    log: Callable[[str], None] = print
    started: float = field(default_factory=time.time)
    earlier_seconds: float = 0.0  # time spent on this stage by earlier, interrupted processes

    @property
    def done(self) -> bool:
        marker = self.dir / "DONE"
        return marker.exists() and marker.read_text().strip() == self.key

    def path(self, name: str) -> Path:
        return self.dir / name

    def generator(self, *parts: Any) -> torch.Generator:
        return generator(self.seed, self.name, *parts)

    @contextmanager
    def seeded(self, *parts: Any):
        """Seed the global RNG from the stage for the block (model initialisation), then restore it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.name, *parts))
            yield

    def prepare(self) -> None:
        """Make the folder; wipe it if the toolkit made it for another config, so stale checkpoints never resume.
        A folder the toolkit did not make (no ``KEY``) is refused unless empty. Temporary files that a killed
        process left are removed; the time earlier processes spent is read back."""
        key_file = self.dir / "KEY"
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise OwnershipError(f"{self.dir} is not a folder diffdebias made for stage '{self.name}'; move it away "
                                 f"or choose another run directory (--out) or --stage-cache")
        if self.dir.exists() and not key_file.exists() and any(self.dir.iterdir()):
            raise OwnershipError(f"{self.dir} already exists and diffdebias did not make it (it has no KEY file), "
                                 f"so stage '{self.name}' will not write there; move it away or choose another run "
                                 f"directory (--out)")
        if key_file.exists() and key_file.read_text().strip() != self.key:
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            write_text(key_file, self.key + "\n")
        for tmp in self.dir.rglob(".*.tmp"):
            if TEMP_FILE.match(tmp.name) and tmp.is_file():
                tmp.unlink()
        seconds = self.dir / "SECONDS"
        self.earlier_seconds = float(seconds.read_text()) if seconds.exists() else 0.0
        self.started = time.time()

    @property
    def seconds(self) -> float:
        """Time spent on this stage so far, earlier interrupted processes included."""
        return self.earlier_seconds + time.time() - self.started

    def checkpointed(self) -> None:
        """Note the time spent so far beside a checkpoint, so a resumed stage reports the time of all its parts."""
        write_text(self.dir / "SECONDS", f"{self.seconds:.3f}\n")

    def finish(self) -> None:
        self.checkpointed()
        write_text(self.dir / "DONE", self.key + "\n")


@contextmanager
def chunked(stage: Stage, n: int, chunk: int, compute: Callable[[int, int], torch.Tensor],
            resumed: Callable[[int], Any] = lambda rows: None) -> Iterator[torch.Tensor | None]:
    """Rows 0..n of a tensor that ``compute(start, stop)`` makes ``chunk`` rows at a time, each chunk saved in the
    stage's folder as it finishes (``chunk_KKKK.safetensors``), so a killed stage resumes at the chunks it lacks.

    Of several processes launched together, every one calls ``compute`` for each chunk the main process has not saved
    (``compute`` shares the work out itself); the ``with`` block gets the whole on the main process, None on the
    others. ``resumed`` hears how many rows the saved chunks already hold. The chunk files go when the block that
    saved the whole ends without an error."""
    main = is_main()
    starts = range(0, n, chunk)
    paths = [stage.path(f"chunk_{k:04d}.safetensors") for k in range(len(starts))]
    parts = [load_resumable(path, lambda p: load_tensors(p)[0]["images"], stage.log) if main else None
             for path in paths]
    resumed(sum(len(part) for part in parts if part is not None))
    for k in share([k for k, part in enumerate(parts) if part is None]):  # the main process's to-do list
        start, stop = starts[k], min(starts[k] + chunk, n)
        stage.log(f"{stage.name}: images {start}-{stop} of {n}")
        done = compute(start, stop)
        if main:
            parts[k] = done
            save_tensors(paths[k], {"images": done})
            stage.checkpointed()
    yield torch.cat(parts) if main else None
    if main:
        for path in paths:
            path.unlink(missing_ok=True)


class Run:
    """A run directory: resolved config, stages, and the log of what was skipped or computed."""

    def __init__(self, root: str | os.PathLike, seed: int, quiet: bool = False,
                 stage_cache: str | os.PathLike | None = None):
        self.root = Path(root)
        self.seed = seed
        process_group()  # launched as several processes: they join before the first stage
        self.main = is_main()  # of several processes, only the main one logs and writes markers
        self.quiet = quiet or not self.main
        self.stage_cache = Path(stage_cache) if stage_cache else None
        if self.main:
            claim_folder(self.root, "run directory (--out)", RUN_MARKER)
            if self.stage_cache is not None:
                claim_folder(self.stage_cache, "stage cache (--stage-cache)")
        self.events: list[dict[str, Any]] = []

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[diffdebias] {msg}", flush=True)

    def stage(self, name: str, what: Reads = NOTHING, version: int = 0) -> Stage:
        """The stage ``name`` keyed by what it reads (:mod:`..keys`) and its code ``version`` (0: the version of
        every stage cached before versions existed, kept out of the key so those stay valid).

        The stage's folder is ``<run>/<name>``; with a shared stage cache it lives in ``<cache>/<name>-<key>`` (found
        by any run that needs the same stage with the same inputs) and ``<run>/<name>`` links to it."""
        settings = {**what.settings, "version": version} if version else dict(what.settings)
        key = config_hash(name, settings, sorted(what.inputs), self.seed)
        local = self.root / name
        if self.stage_cache is None or (not local.is_symlink() and Stage(name, local, key, self.seed).done):
            return Stage(name=name, dir=local, key=key, seed=self.seed, log=self.log)
        return Stage(name=name, dir=self.stage_cache / f"{name}-{key}", key=key, seed=self.seed, log=self.log)

    def _link(self, st: Stage) -> None:
        """Point ``<run>/<name>`` at the stage's folder in the stage cache, replacing only a link or a stage folder
        that the toolkit made."""
        local = self.root / st.name
        if st.dir == local or (local.is_symlink() and local.resolve() == st.dir.resolve()):
            return
        self._clear(local, st.name)
        local.symlink_to(os.path.relpath(st.dir, self.root))

    @staticmethod
    def _clear(local: Path, name: str) -> None:
        """Remove ``<run>/<name>`` if the toolkit made it (a link into a stage cache, a stage folder, an empty
        folder); anything else is the user's and stops the run."""
        if local.is_symlink():
            if not re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", Path(os.readlink(local)).name):
                raise OwnershipError(f"{local} is a link diffdebias did not make (to {os.readlink(local)}); move it "
                                     f"away or choose another run directory (--out)")
            local.unlink()
        elif _is_stage_dir(local):
            shutil.rmtree(local)
        elif local.exists():
            if not local.is_dir() or any(local.iterdir()):
                raise OwnershipError(f"{local} already exists and diffdebias did not make it, so stage '{name}' will "
                                     f"not replace it; move it away or choose another run directory (--out)")
            local.rmdir()

    def cached(self, name: str, compute: Callable[[Stage], None], what: Reads = NOTHING, version: int = 0,
               distributed: bool = False) -> Stage:
        """Run ``compute(stage)`` unless the stage is already done for what it reads (``what``: settings and input
        stages, :func:`..keys.reads`) at this code ``version``. A process that finds another one computing the same
        stage waits for it instead of computing it twice.

        Of several processes launched together (torchrun, accelerate launch), every one calls this for every stage,
        in the same order. The main process alone takes the lock, decides to skip or (re)start the stage and writes
        its markers; the others learn its decision. A ``distributed`` stage (``compute`` splits its work across the
        processes) computes on all of them, any other on the main process while the others wait."""
        st = self.stage(name, what, version)
        lock = exclusive(st.dir.parent / f".{st.dir.name}.lock",
                         on_wait=lambda: self.log(f"stage {name}: another process is computing it, waiting"))
        with lock if self.main else nullcontext():
            skip = self.main and st.done
            if skip:
                self._link(st)
                self.log(f"stage {name}: done, skipped")
            elif self.main:
                self._start(st)
            skip, st.dir = share((skip, st.dir))
            if skip:
                self.events.append({"stage": name, "skipped": True})
                return st
            if self.main or distributed:
                compute(st)
            if self.main:
                st.finish()
            barrier()
        if not self.main:
            return st
        seconds = st.seconds
        self.events.append({"stage": name, "skipped": False, "seconds": seconds})
        timings = self.root / "timings.json"
        record = read_json(timings) if timings.exists() else {}
        record[name] = round(seconds, 3)
        write_json(timings, record)
        self.log(f"stage {name}: finished in {seconds:.1f} s")
        return st

    def _start(self, st: Stage) -> None:
        """Make the stage's folder ready to compute in (afresh, or resuming what an earlier process left)."""
        if st.dir == self.root / st.name and st.dir.is_symlink():  # linked by a run with --stage-cache
            self._clear(st.dir, st.name)
        st.prepare()
        self._link(st)
        resumed = f" (resuming; {st.earlier_seconds:.0f} s spent before)" if st.earlier_seconds else ""
        self.log(f"stage {st.name}: running{resumed}")


def claim_folder(path: Path, what: str, marker: str | None = None) -> None:
    """Make ``path`` or check that it is a folder that can be written. With a ``marker`` (a run directory), an
    existing folder that is not empty must carry it (or be a run written before markers existed: a ``config.yaml`` of
    ours); otherwise it is the user's and refused. Without one (a stage or dataset cache), the folder is shared: its
    entries are named by their hash and never clash with a user's files."""
    if path.exists() and not path.is_dir():
        raise OwnershipError(f"the {what} {path} is a file, not a folder; choose another path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OwnershipError(f"the {what} {path} lies below {parent}, which is a file; choose another path")
    mark = path / marker if marker else None
    if mark and path.is_dir() and not mark.exists() and any(path.iterdir()) and not _legacy_run(path):
        raise OwnershipError(f"the {what} {path} already holds files that diffdebias did not write; a run writes "
                             f"config.yaml, metrics.json, report.md and one folder per stage there, so choose a new "
                             f"or empty folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if mark and not mark.exists():
            write_text(mark, "made by diffdebias: its runs may write and delete stage folders here\n")
    except PermissionError as e:
        raise OwnershipError(f"the {what} {path} cannot be written: permission denied ({e.filename})") from e


def _legacy_run(path: Path) -> bool:
    """A run directory written before :data:`RUN_MARKER` existed: its ``config.yaml`` is one of ours."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"method", "data", "classifier"} <= set(config)
