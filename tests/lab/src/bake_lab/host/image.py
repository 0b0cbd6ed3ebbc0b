"""The lab's base image: where its cached root file system lives and how it is built (atomically)."""
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE_DIR = Path(__file__).resolve().parent / "image-recipe"
DEFAULT_CACHE = "/var/cache/bake-lab"


def recipe_hash() -> str:
    """Hash of every file of the recipe, so any change to it makes a new image."""
    h = hashlib.sha256()
    for path in sorted(RECIPE_DIR.iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    return Path(os.environ.get("LAB_CACHE") or DEFAULT_CACHE)


def image_dir(cache: Path) -> Path:
    """Directory holding the built image: rootfs/ plus its build metadata."""
    return cache / "images" / f"debian-12-{recipe_hash()}"


def build(cache: Path) -> Path:
    """Build the image unless its cached copy exists; a killed build leaves only a temp dir."""
    final = image_dir(cache)
    if (final / "rootfs").is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent labs and checkouts build one image, once
        if (final / "rootfs").is_dir():
            return final
        return _build_locked(final)


def _build_locked(final: Path) -> Path:
    for stale in final.parent.glob(".tmp-*"):  # a killed build's leftovers (we hold the build lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}"
    (tmp / "rootfs").mkdir(parents=True)
    started = time.time()
    subprocess.run(["/bin/sh", str(RECIPE_DIR / "build-rootfs.sh"), str(tmp / "rootfs")], check=True)
    (tmp / "built").write_text(time.strftime("%Y%m%d", time.gmtime()) + "\n")
    os.rename(tmp, final)
    print(f"lab image built in {time.time() - started:.0f}s: {final}", file=sys.stderr)
    return final
