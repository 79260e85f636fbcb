"""Start and stop the Azurite blob emulator (for tests and benchmarks, never for pipelines).

Azurite is installed by ``.ci/install_azurite.sh`` into ``.azurite/`` at the repository
root; ``AZURITE_BLOB_BIN`` may point elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from covid_imaging.azure.credentials import AZURITE_ACCOUNT, AZURITE_KEY

_REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_HINT = "run `bash .ci/install_azurite.sh` (needs Node 20+ and npm)"


def find_azurite_blob() -> Path | None:
    """Path of Azurite's ``azurite-blob`` entry script, or ``None`` if not installed."""
    candidates = [os.environ.get("AZURITE_BLOB_BIN", "")]
    for root in (Path.cwd(), _REPO_ROOT):
        candidates.append(str(root / ".azurite" / "node_modules" / ".bin" / "azurite-blob"))
    candidates.append(shutil.which("azurite-blob") or "")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def missing_reason() -> str | None:
    """Why Azurite cannot start here (``None`` when it can)."""
    if shutil.which("node") is None:
        return f"Node.js is not on PATH, so Azurite cannot run; {INSTALL_HINT}"
    version = ""
    try:
        version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        major = int(version.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        major = 0
    if major < 20:
        return f"Node.js {version.strip() or '(unknown version)'} is too old for Azurite 3.37 (needs 20+)"
    if find_azurite_blob() is None:
        return (
            f"Azurite is not installed (no .azurite/node_modules/.bin/azurite-blob); {INSTALL_HINT}"
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AzuriteServer:
    """``azurite-blob`` on a free loopback port with a throw-away workspace.

    Use as a context manager; ``connection_string`` uses Azurite's well-known dev account.
    """

    def __init__(self, workspace: Path | None = None, startup_timeout_s: float = 60.0) -> None:
        self._own_workspace = workspace is None
        self.workspace = Path(workspace or tempfile.mkdtemp(prefix="azurite-"))
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> AzuriteServer:
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        script = find_azurite_blob()
        self.port = _free_port()
        self.workspace.mkdir(parents=True, exist_ok=True)
        log_path = self.workspace / "azurite.log"
        command = [
            shutil.which("node") or "node",
            str(script),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.workspace),
            # azure-storage-blob 12.31 sends an x-ms-version newer than Azurite 3.37 knows.
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ]
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workspace
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Azurite exited with code {self._process.returncode}: {tail}")
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Azurite did not answer on 127.0.0.1:{self.port} within {self.startup_timeout_s:.0f}s"
        )

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.blob_endpoint}?comp=list", timeout=1)
        except urllib.error.HTTPError:
            return True  # any HTTP status (403 without auth) means it is serving
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Stop the emulator by its PID and remove a workspace this object created."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._own_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
