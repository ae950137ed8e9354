"""The vectors an index update has embedded so far, kept on disk so an interrupted update (Ctrl-C, a closed
laptop, a crash) resumes where it stopped instead of embedding the whole gallery again."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

FOLDER = "unfinished"
UNIT_TOLERANCE = 1e-3  # a stored vector is unit length; a row the disk never got (zeros, a torn write) is not


class Journal:
    """Vectors by content hash, appended batch by batch; read back by the next update of the same index."""

    def __init__(self, root: Path, model_version: str):
        self.folder = Path(root) / FOLDER
        self.model_version = model_version
        self.rows: dict[str, np.ndarray] = {}
        self._vectors = self._shas = None

    @classmethod
    def open(cls, root: Path, model_version: str) -> "Journal":
        """The journal of this index; what an interrupted update by another model version left is thrown away."""
        journal = cls(root, model_version)
        try:
            meta = json.loads((journal.folder / "meta.json").read_text())
            if meta["model_version"] != model_version:
                raise ValueError("made by another model version")
            journal.rows = _read_rows(journal.folder, int(meta["dim"]))
        except (OSError, ValueError, KeyError, TypeError):
            journal.discard()
        return journal

    def add(self, shas: list[str], vectors: np.ndarray) -> None:
        """Keep one embedded batch; the vectors are written before their hashes, so every listed hash has its row."""
        if not shas:
            return
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self._vectors is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            meta = self.folder / "meta.json"
            if not meta.exists():
                meta.write_text(json.dumps({"model_version": self.model_version, "dim": vectors.shape[1]}))
            self._vectors = open(self.folder / "vectors.f32", "ab")
            self._shas = open(self.folder / "shas.txt", "a", encoding="ascii")
        self._vectors.write(vectors.tobytes())
        self._vectors.flush()
        self._shas.write("".join(f"{sha}\n" for sha in shas))
        self._shas.flush()

    def discard(self) -> None:
        """The update finished (or the journal is unusable): nothing to resume any more."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.rows = {}

    def close(self) -> None:
        for handle in (self._vectors, self._shas):
            if handle is not None:
                try:
                    handle.close()
                except OSError:  # a full disk: the rows it could not take are torn, and never read back
                    pass
        self._vectors = self._shas = None


def _read_rows(folder: Path, dim: int) -> dict[str, np.ndarray]:
    """The rows written whole: as many as both files hold, up to the first that is not a unit vector. Both files
    are cut back to them, so that this update's appends line up (a batch whose vectors were written but not its
    hashes would otherwise pair each later hash with the vector before its own)."""
    vectors = np.fromfile(folder / "vectors.f32", np.float32)
    vectors = vectors[: len(vectors) // dim * dim].reshape(-1, dim)
    shas = (folder / "shas.txt").read_text(encoding="ascii").split("\n")[:-1]  # a torn last line has no newline
    count = min(len(vectors), len(shas))
    norms = np.linalg.norm(vectors[:count], axis=1)
    bad = np.flatnonzero(np.abs(norms - 1) > UNIT_TOLERANCE)
    count = int(bad[0]) if len(bad) else count
    os.truncate(folder / "vectors.f32", count * dim * vectors.itemsize)
    os.truncate(folder / "shas.txt", sum(len(sha) + 1 for sha in shas[:count]))
    return {sha: vectors[i] for i, sha in enumerate(shas[:count])}
