"""Shared helpers of the migration tests: a fake legacy installation in a temporary tree."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from papin.llm.migration import LegacyDetection, detect_legacy
from tests.ggufs import write_gguf

LEGACY_DATA = Path(__file__).parent / "data" / "legacy"


@dataclass
class LegacyTree:
    """A home, a data dir, a working directory and papin's model store, all under ``root``."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def data_dir(self) -> Path:
        return self.home / ".local" / "share"

    @property
    def cwd(self) -> Path:
        return self.root / "work"

    @property
    def store(self) -> Path:
        return self.root / "store"

    def put(self, relative: str, stored: str) -> Path:
        """Copy the stored legacy example ``stored`` to ``relative`` under the root."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LEGACY_DATA / stored, target)
        return target

    def write(self, relative: str, text: str) -> Path:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def gguf(self, relative: str, **kwargs: Any) -> Path:
        return write_gguf(self.root / relative, **kwargs)

    def detect(
        self,
        *,
        platform: str = "linux",
        registry_reader: Callable[[str, str, str], str | None] | None = None,
        **kwargs: Any,
    ) -> LegacyDetection:
        return detect_legacy(
            home=self.home,
            data_dir=self.data_dir,
            cwd=self.cwd,
            platform=platform,
            environ={},
            registry_reader=registry_reader,
            store_root=self.store,
            **kwargs,
        )

    def snapshot(self, *folders: Path) -> dict[str, tuple[str, int]]:
        """sha256 and mtime of every file under ``folders`` (default: home and cwd)."""
        out: dict[str, tuple[str, int]] = {}
        for folder in folders or (self.home, self.cwd):
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        return out


def make_tree(root: Path) -> LegacyTree:
    tree = LegacyTree(root)
    for folder in (tree.home, tree.data_dir, tree.cwd):
        folder.mkdir(parents=True, exist_ok=True)
    return tree
