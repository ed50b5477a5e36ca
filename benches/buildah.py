"""The two builders as the build benchmarks run them: MemoBuild's CLI and Debian's Buildah.

Both start from the same base image: a busybox root filesystem (the host's static busybox, an
applet symlink each, /etc/passwd, /tmp) that ``memobuild import`` turns into ``busybox:latest``
in MemoBuild's store; the same image is written as an OCI layout and pulled into Buildah's
storage under the same name, so ``FROM busybox`` is one layer with the same bytes for both.

Buildah runs as the issue asks: ``buildah bud --layers --storage-driver vfs --isolation
chroot``, with ``--pull-never`` (the base is in its storage; MemoBuild does not pull either) and
a private ``--root``/``--runroot`` per store, so nothing outside the benchmark's temporary
directory is read or written. MemoBuild runs as a user runs it, ``memobuild build`` in a new
process, so both pay their process start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BASE = "busybox:latest"
BASE_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def static_busybox() -> Path:
    """The static busybox of Debian's busybox-static (the one a rootfs can run)."""
    listing = subprocess.run(
        ["dpkg", "-L", "busybox-static"], capture_output=True, text=True, check=False
    ).stdout.split()
    for path in listing:
        if path.endswith("/busybox") and os.path.isfile(path):
            return Path(path)
    raise RuntimeError("busybox-static is not installed (run scripts/install-system-deps)")


def make_busybox_rootfs(root: Path) -> Path:
    """The base image's tree: busybox and its applets in /bin, root in /etc, /tmp 1777."""
    busybox = static_busybox()
    for name in ("bin", "etc", "tmp", "root"):
        (root / name).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)  # noqa: S103 - a base image's /tmp is world-writable
    os.chmod(root / "root", 0o700)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


@dataclass(frozen=True)
class BuildCounts:
    """How many steps of a build ran and how many came from the cache."""

    executed: int
    cached: int


class MemoBuild:
    """``memobuild`` with its own cache directory (``MEMOBUILD_CACHE_DIR``)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(cache)}
        self.events = cache.parent / f"{cache.name}-events.jsonl"

    def run(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "memobuild.cli", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def import_base(self, rootfs: Path) -> None:
        """``busybox:latest`` in this cache, from ``rootfs`` (deterministic: SOURCE_DATE_EPOCH)."""
        self.env["SOURCE_DATE_EPOCH"] = "0"
        try:
            self.run(
                "import",
                str(rootfs),
                BASE,
                "--change",
                f"ENV PATH={BASE_ENV_PATH}",
                "--change",
                'CMD ["sh"]',
            )
        finally:
            del self.env["SOURCE_DATE_EPOCH"]

    def export_base(self, layout: Path) -> None:
        """The base image as an OCI layout, for Buildah to pull."""
        code = (
            "import sys; from pathlib import Path\n"
            "from memobuild.cache.store import LocalStore\n"
            "from memobuild.images import ImageStore\n"
            "from memobuild.oci.layout import write_oci_layout\n"
            "with LocalStore() as store:\n"
            f"    image = ImageStore(store).load({BASE!r})\n"
            "    assert image is not None\n"
            "    write_oci_layout(image, store, Path(sys.argv[1]), tag='latest')\n"
        )
        subprocess.run([sys.executable, "-c", code, str(layout)], env=self.env, check=True)

    def build(self, context: Path, dockerfile: Path, tag: str) -> None:
        """One build, as the benchmark times it."""
        self.run(
            "build", str(context), "-f", str(dockerfile), "-t", tag, "--events", str(self.events)
        )

    def last_counts(self) -> BuildCounts:
        """Executed and cached steps of the last build, from its --events file."""
        kinds = [json.loads(line)["event"] for line in self.events.read_text().splitlines()]
        return BuildCounts(kinds.count("StepExecuted"), kinds.count("StepCached"))


class Buildah:
    """``buildah`` with a private vfs store under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_cmd = [
            "buildah",
            "--root",
            str(root / "root"),
            "--runroot",
            str(root / "runroot"),
            "--storage-driver",
            "vfs",
        ]
        self.last_output = ""

    @staticmethod
    def available() -> bool:
        return shutil.which("buildah") is not None

    def run(self, *args: str) -> str:
        cmd = [*self.base_cmd, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def pull_base(self, layout: Path) -> None:
        """``busybox:latest`` in this store, from the OCI layout MemoBuild wrote."""
        image_id = self.run("pull", "--quiet", f"oci:{layout}:latest").split()[-1]
        self.run("tag", image_id, BASE)

    def build(self, context: Path, dockerfile: Path, tag: str) -> None:
        """One build, as the benchmark times it."""
        self.last_output = self.run(
            "bud",
            "--layers",
            "--isolation",
            "chroot",
            "--pull-never",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            str(context),
        )

    def last_counts(self) -> BuildCounts:
        """Executed and cached steps of the last build, from its output: every step but FROM
        says ``Using cache`` when it hit."""
        lines = self.last_output.splitlines()
        steps = sum(1 for line in lines if " STEP " in f" {line}" and ": FROM " not in line)
        cached = sum(1 for line in lines if line.startswith("--> Using cache"))
        return BuildCounts(steps - cached, cached)

    def remove(self) -> None:
        """Delete the store (vfs with chroot isolation leaves no mounts behind)."""
        shutil.rmtree(self.root, ignore_errors=True)
