"""The run directory: where stages keep their artifacts, and the manifest that vouches for them.

Every artifact is written atomically (temporary file, fsync, rename) and recorded in
`manifest.json` with its sha256, the stage and options that made it, the hashes of the
artifacts it was made from, the CLIP model it depends on and the versions of the stack.
Reads are verified against the manifest, so a stage never trusts a file that was cut off,
edited, or made with another CLIP model. A stage that writes holds the run's lock
(`Run.writing`), so a second writing stage is refused rather than interleaved. Nothing else
in clipgap opens run-directory files by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from clipgap_cli.errors import ClipgapError
from clipgap_cli.io import atomic_write, sha256_of
from clipgap_cli.versions import stack_versions

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
RUN_LOCK = ".run.lock"  # held by the one stage writing the run; it names that stage

# The layout (docs/run-directory.md): each artifact's place in the run directory, relative to
# its root, and the stage that makes it.
TEXT_EMBEDDINGS = "prompts/text_embeddings.pt"
OFFSETS = "augs/offsets.pt"
AUGS_REPORT = "augs/report.json"
AUGS_LOSS_PLOT = "augs/loss.png"
WORK_DIR = "train"
TRAINED_CONFIG = f"{WORK_DIR}/clipgap_config.py"  # the config train resolved, in mmengine's work directory
EVAL_DIR = "eval"
PRODUCERS = {
    TEXT_EMBEDDINGS: "encode-prompts",
    OFFSETS: "optimize-augs",
    AUGS_REPORT: "optimize-augs",
    AUGS_LOSS_PLOT: "optimize-augs",
    TRAINED_CONFIG: "train",
}

ClipIdentity = Mapping[str, Any]
"""What identifies a CLIP model: `{"model": "RN101", "pretrained": "openai", "sha256": None}`."""


@dataclass(frozen=True)
class Artifact:
    """One manifest entry."""

    path: str
    sha256: str
    size: int
    stage: str
    options: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    clip: dict[str, Any] | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        entry = asdict(self)
        del entry["path"]
        return entry


def describe_clip(clip: ClipIdentity | None) -> str:
    """`RN101 (openai)`, `RN-synth (synth, sha256 3f2a…)`, `RN50 (file sha256 3f2a…)` or
    `unknown CLIP model`."""
    if not clip:
        return "unknown CLIP model"
    weights = clip.get("pretrained") or "random weights"
    if clip.get("sha256"):
        tag = clip.get("pretrained")
        kind = tag if tag and not Path(str(tag)).suffix else "file"  # shipped weights keep their tag
        weights = f"{kind} sha256 {clip['sha256'][:12]}"
    return f"{clip.get('model')} ({weights})"


class Run:
    """A run directory and its manifest. Open one with `Run.open` or `Run.create`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def create(cls, root: Path | str) -> Run:
        """Open `root`, making it (and an empty manifest) if it does not exist yet."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ClipgapError(f"{root} is a file, not a run directory; choose another --run path")
        run = cls(root)
        if not (root / MANIFEST).exists():
            if root.exists() and any(root.iterdir()):
                raise ClipgapError(
                    f"{root} is not empty and has no {MANIFEST}; choose a new or empty --run directory"
                )
            root.mkdir(parents=True, exist_ok=True)
            with run._locked():
                run._save({})
        run.artifacts()  # validates an existing manifest
        return run

    @classmethod
    def open(cls, root: Path | str) -> Run:
        """Open an existing run directory; a clear error if it is missing or not a run."""
        root = Path(root)
        if not root.is_dir():
            raise ClipgapError(f"run directory {root} does not exist")
        if not (root / MANIFEST).is_file():
            raise ClipgapError(f"{root} is not a clipgap run directory: it has no {MANIFEST}")
        run = cls(root)
        run.artifacts()
        return run

    def path(self, rel: str) -> Path:
        return self.root / rel

    # -- the manifest -------------------------------------------------------------------

    def artifacts(self) -> dict[str, Artifact]:
        """All recorded artifacts, keyed by relative path. Raises on a corrupt manifest."""
        manifest_path = self.root / MANIFEST
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {data.get('format')!r}")
            return {rel: Artifact(path=rel, **entry) for rel, entry in data["artifacts"].items()}
        except FileNotFoundError:
            raise ClipgapError(f"{self.root} is not a clipgap run directory: it has no {MANIFEST}") from None
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as err:
            raise ClipgapError(
                f"{manifest_path} is corrupt ({err}); restore it from a backup or start a new run directory"
            ) from None

    def artifact(self, rel: str) -> Artifact | None:
        return self.artifacts().get(rel)

    def status(self, artifact: Artifact) -> str:
        """`ok`, `missing` or `modified` (the file no longer has its recorded sha256)."""
        file = self.path(artifact.path)
        if not file.is_file():
            return "missing"
        if file.stat().st_size != artifact.size or sha256_of(file) != artifact.sha256:
            return "modified"
        return "ok"

    # -- verified reads -----------------------------------------------------------------

    def verified(self, rel: str) -> Artifact:
        """The manifest entry of `rel`, after checking that the file on disk is the one recorded."""
        artifact = self.artifact(rel)
        remedy = (
            f"run `clipgap {PRODUCERS[rel]}` first" if rel in PRODUCERS else "re-run the stage that makes it"
        )
        if artifact is None:
            raise ClipgapError(f"run directory {self.root} has no {rel}; {remedy}")
        status = self.status(artifact)
        if status == "missing":
            raise ClipgapError(f"{self.path(rel)} is recorded in the manifest but missing; {remedy}")
        if status == "modified":
            raise ClipgapError(
                f"{self.path(rel)} does not match the sha256 in the manifest (it changed after "
                f"{artifact.stage} wrote it); re-run `clipgap {artifact.stage} --force`"
            )
        return artifact

    def verified_path(self, rel: str) -> Path:
        """The path of `rel`, verified as `verified` does."""
        self.verified(rel)
        return self.path(rel)

    def check_clip(self, inputs: Iterable[str], clip: ClipIdentity | None = None) -> dict[str, Any] | None:
        """The CLIP model shared by the verified `inputs` (and `clip`, if given); refuses a mix.

        Stages call this before their work, so that a mismatch fails in a second, not after
        an hour of training.
        """
        return _shared_clip({rel: self.verified(rel) for rel in inputs}, clip)

    def is_current(
        self, rel: str, stage: str, options: Mapping[str, Any], inputs: Iterable[str] = ()
    ) -> bool:
        """Whether `rel` exists, verifies, and was made by `stage` with these options from
        the inputs as they are now: re-running the stage would be a no-op."""
        artifact = self.artifact(rel)
        if artifact is None or self.status(artifact) != "ok":
            return False
        current_inputs = {}
        for name in inputs:
            recorded = self.artifact(name)
            if recorded is None:
                return False
            current_inputs[name] = recorded.sha256
        return (
            artifact.stage == stage
            and artifact.options == _jsonable(options)
            and artifact.inputs == current_inputs
        )

    # -- writes -------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, stage: str) -> Iterator[IO[bytes]]:
        """Hold the run's lock while `stage` writes it; refuse in one sentence if another
        stage holds it. Yields the open lock file.

        The lock is an `flock` on `.run.lock`, which the kernel releases when the holding
        process ends, however it ends: a killed stage leaves no lock behind, and the next
        stage takes it over. Processes the stage starts that inherit the open lock file hold
        the lock with it, until the last of them ends. The file also records who holds it, for
        the refusal. Reading a run takes no lock.
        """
        path = self.root / RUN_LOCK
        with open(path, "a+b", buffering=0) as lock:  # unbuffered: a failed write leaves nothing pending
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ClipgapError(
                    f"{self.root} is in use by {_holder(path)}; wait for it to finish"
                ) from None
            try:
                holder = {
                    "stage": stage,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": datetime.now().astimezone().isoformat(timespec="seconds"),
                }
                lock.truncate(0)
                lock.write(json.dumps(holder).encode() + b"\n")
                yield lock
            finally:
                lock.truncate(0)
                fcntl.flock(lock, fcntl.LOCK_UN)

    def write(
        self,
        rel: str,
        write: Callable[[Path], None],
        *,
        stage: str,
        options: Mapping[str, Any],
        inputs: Iterable[str] = (),
        clip: ClipIdentity | None = None,
    ) -> Artifact:
        """Write the artifact `rel` atomically with `write(tmp_path)` and record it.

        `inputs` are the artifacts it was made from (verified first); `clip` the CLIP model
        it depends on, which must agree with the inputs'. An artifact made from CLIP-bound
        inputs is itself bound to their CLIP model.
        """
        verified_inputs = {name: self.verified(name) for name in inputs}
        shared_clip = _shared_clip(verified_inputs, clip)
        atomic_write(self.path(rel), write)
        return self._record(rel, stage, options, verified_inputs, shared_clip)

    def record(
        self,
        rel: str,
        *,
        stage: str,
        options: Mapping[str, Any],
        inputs: Iterable[str] = (),
        clip: ClipIdentity | None = None,
    ) -> Artifact:
        """Record a file that is already in place, written whole by another writer (mmengine's
        checkpoints, which it writes before pointing `last_checkpoint` at them); as `write`."""
        verified_inputs = {name: self.verified(name) for name in inputs}
        shared_clip = _shared_clip(verified_inputs, clip)
        if not self.path(rel).is_file():
            raise ClipgapError(f"cannot record {self.path(rel)}: there is no such file")
        return self._record(rel, stage, options, verified_inputs, shared_clip)

    def forget(self, rels: Iterable[str]) -> None:
        """Drop the manifest entries of `rels` (artifacts a stage has deleted or replaced)."""
        rels = set(rels)
        with self._locked():
            artifacts = self.artifacts()
            self._save({rel: a for rel, a in artifacts.items() if rel not in rels})

    def _record(
        self, rel: str, stage: str, options: Mapping[str, Any], inputs: Mapping[str, Artifact], clip
    ) -> Artifact:
        target = self.path(rel)
        artifact = Artifact(
            path=rel,
            sha256=sha256_of(target),
            size=target.stat().st_size,
            stage=stage,
            options=_jsonable(options),
            inputs={name: a.sha256 for name, a in inputs.items()},
            clip=clip,
            versions=stack_versions(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._locked():
            artifacts = self.artifacts()
            artifacts[rel] = artifact
            self._save(artifacts)
        return artifact

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Stages of one run may finish concurrently (e.g. two evaluations); the lock makes
        # each manifest update a read-modify-write that no other one interleaves with.
        with open(self.root / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, artifacts: Mapping[str, Artifact]) -> None:
        data = {
            "format": MANIFEST_FORMAT,
            "artifacts": {rel: artifacts[rel].to_json() for rel in sorted(artifacts)},
        }
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        atomic_write(self.root / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def writes_run(stage: str) -> Callable[[Callable], Callable]:
    """A stage function whose first argument is an existing run directory, run holding that
    run's lock (`Run.writing`) from its first check to its last write."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def locked(run: Path | str, *args, **kwargs):
            with Run.open(run).writing(stage):
                return function(run, *args, **kwargs)

        return locked

    return decorate


def _holder(lock: Path) -> str:
    """`optimize-augs (pid 1234) since 12:03:04`: the stage that holds the run's lock, as it
    recorded itself (`another clipgap stage` while it is still writing the record)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        since = datetime.fromisoformat(holder["since"])
        where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another clipgap stage"
    same_day = since.date() == datetime.now(since.tzinfo).date()
    when = since.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")
    return f"{holder['stage']} (pid {holder['pid']}{where}) since {when}"


def _shared_clip(inputs: Mapping[str, Artifact], clip: ClipIdentity | None) -> dict[str, Any] | None:
    known = [("this stage", dict(clip))] if clip else []
    known += [(rel, artifact.clip) for rel, artifact in inputs.items() if artifact.clip]
    if not known:
        return None
    first_name, first = known[0]
    for name, other in known[1:]:
        if other != first:
            raise ClipgapError(
                f"{name} was made with CLIP {describe_clip(other)} but {first_name} uses "
                f"{describe_clip(first)}; use one CLIP model for the whole run "
                "(same --clip and --pretrained) or start a new run directory"
            )
    return first


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as they read back from the manifest (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(dict(options), default=str))
