"""SoftHSM2 as the HSM in tests: one fresh token in a temp dir per test session.

SoftHSM reads ``SOFTHSM2_CONF`` when the PKCS#11 module is initialized, and
initialization is process-wide, so the token is session-scoped: every test shares
it (keys are labelled by unique key IDs, so they do not collide).  ``outage()``
takes the token away the way a dead device does: its directory disappears, and
every call on an open session fails until it is back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import require_server

PIN = "4711-qkms"
SO_PIN = "so-4711-qkms"
LABEL = "qkms"
LIBRARY_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
)


def find_library() -> str | None:
    return next((p for p in LIBRARY_PATHS if Path(p).exists()), None)


@dataclass
class SoftHsm:
    library: str
    conf: Path
    token_dir: Path
    label: str = LABEL
    pin: str = PIN

    def options(self) -> dict[str, str]:
        """The provider options, as the environment would give them."""
        return {"HSM_LIBRARY": self.library, "HSM_SLOT": self.label, "HSM_PIN": self.pin}

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The token is gone while inside; it comes back, with every object, afterwards."""
        away = self.token_dir.with_name(self.token_dir.name + ".away")
        self.token_dir.rename(away)
        try:
            yield
        finally:
            away.rename(self.token_dir)


def start_softhsm(root: Path) -> SoftHsm:
    """Write a config whose token dir is under ``root`` and initialize a token in it."""
    util, library = shutil.which("softhsm2-util"), find_library()
    if util is None or library is None:
        require_server("SoftHSM2", "install it with `apt-get install softhsm2`")
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        require_server("SoftHSM2", "python-pkcs11 is missing: pip install 'qkms[hsm]'")
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    done = subprocess.run([util, "--init-token", "--free", "--label", LABEL, "--pin", PIN,
                           "--so-pin", SO_PIN], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        require_server("SoftHSM2", f"softhsm2-util --init-token failed: {done.stderr.strip()}")
    return SoftHsm(library, conf, tokens)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory) -> Iterator[SoftHsm]:
    previous = os.environ.get("SOFTHSM2_CONF")
    yield start_softhsm(tmp_path_factory.mktemp("softhsm"))
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def hsm_options(softhsm: SoftHsm) -> dict[str, str]:
    return softhsm.options()
