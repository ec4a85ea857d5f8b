"""A second Docker engine on its own socket, data root and exec root: the stand-in for a second machine."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mlsd_assets.core.serving.runtime import stop_process


@dataclass
class SecondEngine:
    """dockerd with a bridge and no iptables rules of its own (its containers use the host network), so it never
    touches the chains or the docker0 bridge of the engine already running here: a dockerd started with
    `--bridge=none` deletes docker0, which would cut the first engine's default network."""

    name: str
    process: subprocess.Popen[bytes]
    run_dir: Path
    data_root: Path
    bridge: str

    @property
    def host(self) -> str:
        return f"unix://{self.run_dir / 'docker.sock'}"

    @classmethod
    def start(cls, name: str, timeout_s: float = 90) -> SecondEngine:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (apt-get install docker.io)")
        run_dir = Path(f"/run/{name}-engine")
        data_root = Path(f"/var/lib/{name}-engine")
        run_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(name.encode()).digest()
        bridge = f"mlsd2-{digest.hex()[:8]}"
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"10.254.{digest[0]}.1/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        # its own identity: an engine's ID comes from its trust key, by default /etc/docker/key.json, which the
        # engine already running here uses too (a real second host has its own)
        (run_dir / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(run_dir / "key.json")}))
        log = (run_dir / "dockerd.log").open("wb")
        process = subprocess.Popen(
            [
                "dockerd",
                f"--host=unix://{run_dir / 'docker.sock'}",
                f"--data-root={data_root}",
                f"--exec-root={run_dir / 'exec'}",
                f"--pidfile={run_dir / 'dockerd.pid'}",
                f"--config-file={run_dir / 'daemon.json'}",
                "--storage-driver=vfs",
                f"--bridge={bridge}",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        engine = cls(name, process, run_dir, data_root, bridge)
        deadline = time.monotonic() + timeout_s
        while subprocess.run(["docker", "-H", engine.host, "info"], capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                log = engine.log()  # before stop(), which removes run_dir
                engine.stop()
                raise RuntimeError(f"second dockerd did not answer:\n{log[-3000:]}")
            time.sleep(0.5)
        return engine

    def log(self) -> str:
        return (self.run_dir / "dockerd.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout_s=30)
        # a dockerd that died uncleanly leaves its data root bind-mounted on itself: rmtree alone cannot remove it
        # and dockerd bind-mounts the host's network namespace under its exec root, which it does not undo
        for mount in (self.data_root, self.run_dir / "exec" / "netns" / "default"):
            subprocess.run(["umount", "--lazy", str(mount)], check=False, capture_output=True)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False)
