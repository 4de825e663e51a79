"""Run directories, cached stages, atomic files and seeding.

A run directory holds one experiment: ``config.yaml`` and one folder per stage. A stage is finished when its ``DONE``
file holds the hash of its config and inputs; a stage whose hash changed starts afresh, one without ``DONE`` resumes
from whatever checkpoint it left. Every file goes through a temporary name and a rename, so a killed process leaves
the last good state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; shards must not share a stage there
    fcntl = None

import torch
from safetensors.torch import load_file, save_file

# ----------------------------------------------------------------------------------------------------------- files


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


@dataclass
class Stage:
    """One cached step of a run. ``key`` hashes the stage's config and its inputs' keys."""

    name: str
    dir: Path
    key: str
    seed: int
    log: Callable[[str], None] = print
    started: float = field(default_factory=time.time)

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
        """Make the folder; wipe it if it was made for another config, so stale checkpoints never resume."""
        key_file = self.dir / "KEY"
        if self.dir.exists() and (not key_file.exists() or key_file.read_text().strip() != self.key):
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            write_text(key_file, self.key + "\n")

    def finish(self) -> None:
        write_text(self.dir / "DONE", self.key + "\n")


class Run:
    """A run directory: resolved config, stages, and the log of what was skipped or computed."""

    def __init__(self, root: str | os.PathLike, seed: int, quiet: bool = False,
                 stage_cache: str | os.PathLike | None = None):
        self.root = Path(root)
        self.seed = seed
        self.quiet = quiet
        self.stage_cache = Path(stage_cache) if stage_cache else None
        self.root.mkdir(parents=True, exist_ok=True)
        self.events: list[dict[str, Any]] = []

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[diffdebias] {msg}", flush=True)

    def stage(self, name: str, config: Any, inputs: Iterable[str] = ()) -> Stage:
        """The stage's folder is ``<run>/<name>``; with a shared stage cache it lives in ``<cache>/<name>-<key>``
        (found by any run that needs the same stage with the same inputs) and ``<run>/<name>`` links to it."""
        key = config_hash(name, config, sorted(inputs), self.seed)
        local = self.root / name
        if self.stage_cache is None or (not local.is_symlink() and Stage(name, local, key, self.seed).done):
            return Stage(name=name, dir=local, key=key, seed=self.seed, log=self.log)
        return Stage(name=name, dir=self.stage_cache / f"{name}-{key}", key=key, seed=self.seed, log=self.log)

    def _link(self, st: Stage) -> None:
        local = self.root / st.name
        if st.dir == local:
            return
        if local.is_symlink() and local.resolve() == st.dir.resolve():
            return
        if local.is_symlink() or local.is_file():
            local.unlink()
        elif local.exists():
            shutil.rmtree(local)
        local.symlink_to(os.path.relpath(st.dir, self.root))

    def cached(self, name: str, config: Any, compute: Callable[[Stage], None], inputs: Iterable[str] = ()) -> Stage:
        """Run ``compute(stage)`` unless the stage is already done for this config and these inputs. A process that
        finds another one computing the same stage waits for it instead of computing it twice."""
        st = self.stage(name, config, inputs)
        lock = st.dir.parent / f".{st.dir.name}.lock"
        with exclusive(lock, on_wait=lambda: self.log(f"stage {name}: another process is computing it, waiting")):
            if st.done:
                self._link(st)
                self.log(f"stage {name}: done, skipped")
                self.events.append({"stage": name, "skipped": True})
                return st
            st.prepare()
            self._link(st)
            self.log(f"stage {name}: running")
            t0 = time.time()
            compute(st)
            st.finish()
        seconds = time.time() - t0
        self.events.append({"stage": name, "skipped": False, "seconds": seconds})
        timings = self.root / "timings.json"
        record = read_json(timings) if timings.exists() else {}
        record[name] = round(seconds, 3)
        write_json(timings, record)
        self.log(f"stage {name}: finished in {seconds:.1f} s")
        return st
