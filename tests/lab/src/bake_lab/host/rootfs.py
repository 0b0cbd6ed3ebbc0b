"""Root file systems: AMIs as stacks of read-only layers, instances as overlay mounts with their own upper dir."""
import os
import shutil
import threading
import uuid
from pathlib import Path

from . import sh


class LayerStore:
    """Layers are directories; an AMI is a list of them (bottom first). A baked layer lives until nothing uses it.

    Users of a baked layer are the snapshots that hold it (freed by DeleteSnapshot) and the
    instances whose overlay mounts it; the base image's layer (and the cached layers of the base AMIs
    made from it, see `keep`) live in the cache and are never freed.
    """

    def __init__(self, state_dir: Path, base_rootfs: Path):
        self.base = base_rootfs
        self.dir = state_dir / "layers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.image_layers: dict[str, list[Path]] = {}  # (region, image id) key -> layers
        self._users: dict[Path, set[str]] = {}
        self._permanent: set[Path] = {base_rootfs}
        self._lock = threading.Lock()

    def layers_of(self, region: str, image_id: str) -> list[Path]:
        """The layers of an AMI; AMIs the lab did not make (moto's catalogue) boot the base image."""
        return self.image_layers.get(f"{region}/{image_id}", [self.base])

    def register(self, region: str, image_id: str, layers: list[Path]) -> None:
        self.image_layers[f"{region}/{image_id}"] = layers

    def forget_image(self, region: str, image_id: str) -> None:
        self.image_layers.pop(f"{region}/{image_id}", None)

    def keep(self, layer: Path) -> None:
        """A layer from the cache (a base AMI's): used like the base, never freed."""
        self._permanent.add(layer)

    def hold(self, layers: list[Path], user: str) -> None:
        with self._lock:
            for layer in layers:
                if layer not in self._permanent:
                    self._users.setdefault(layer, set()).add(user)

    def release(self, layers: list[Path], user: str) -> None:
        """Drop a user of the layers and delete the ones nobody uses any more."""
        with self._lock:
            doomed = []
            for layer in layers:
                users = self._users.get(layer)
                if users is None:
                    continue
                users.discard(user)
                if not users:
                    del self._users[layer]
                    doomed.append(layer)
        for layer in doomed:
            shutil.rmtree(layer, ignore_errors=True)

    def clear(self) -> None:
        """Forget every image and delete every baked layer (lab reset, after all instances are gone)."""
        with self._lock:
            self.image_layers.clear()
            self._users.clear()
        for layer in self.dir.iterdir():
            shutil.rmtree(layer, ignore_errors=True)

    def held_layers(self) -> list[Path]:
        with self._lock:
            return list(self._users)

    def capture(self, upper: Path) -> Path:
        """Copy an instance's upper dir (its changes, whiteouts and xattrs included) as a new layer."""
        tmp = self.dir / f".tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        # cp -a keeps owners, modes, xattrs (overlay opaque dirs) and whiteouts. 600 s: an upper dir of
        # a few GB copies well within that; the usual web-server bake (~100 MB) takes about a second.
        sh.run("cp", "-a", "--reflink=auto", f"{upper}/.", str(tmp), timeout=600)
        final = self.dir / tmp.name[len(".tmp-"):]
        os.rename(tmp, final)
        return final

    def stored_layers(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if not p.name.startswith("."))


class Overlay:
    """An instance's root: the AMI's layers read-only plus its own upper dir, mounted at merged/."""

    def __init__(self, home: Path, layers: list[Path]):
        self.home = home
        self.layers = layers
        self.upper = home / "upper"
        self.work = home / "work"
        self.merged = home / "merged"

    def mount(self) -> None:
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.merged):
            return
        lower = ":".join(str(p) for p in reversed(self.layers))  # overlayfs lists the top layer first
        sh.run("mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={lower},upperdir={self.upper},workdir={self.work}", str(self.merged))

    def unmount(self) -> None:
        if os.path.ismount(self.merged):
            sh.run("umount", str(self.merged), check=False)
            if os.path.ismount(self.merged):
                sh.run("umount", "-l", str(self.merged), check=False)

    def remove(self) -> None:
        self.unmount()
        shutil.rmtree(self.home, ignore_errors=True)


def unmount_all_under(path: Path) -> None:
    """Unmount every mount below path, deepest first (stale cleanup and lab shutdown)."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        sh.run("umount", mnt, check=False)
        if os.path.ismount(mnt):
            sh.run("umount", "-l", mnt, check=False)
