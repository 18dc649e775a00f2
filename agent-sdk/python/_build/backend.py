"""A build backend of the standard library alone (PEP 517 and PEP 660 hooks), so that
`pip install ./agent-sdk/python` works offline and without `setuptools` or `wheel`: the package
is pure Python, and a wheel of it is a zip of its files with the metadata beside them."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import zipfile
from typing import Dict, List, Optional

NAME = "corral_agent"
VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "py3-none-any"
METADATA = f"""Metadata-Version: 2.1
Name: {NAME}
Version: {VERSION}
Summary: Write agents that corral supervises: the wire protocol, heartbeats, tool calls
License: Apache-2.0
Requires-Python: >=3.9
Classifier: Typing :: Typed
"""
WHEEL = f"""Wheel-Version: 1.0
Generator: corral_agent-backend
Root-Is-Purelib: true
Tag: {TAG}
"""


def _package_files() -> List[str]:
    out = []
    for base, dirs, files in os.walk(os.path.join(ROOT, NAME)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py") or f == "py.typed":
                out.append(os.path.relpath(os.path.join(base, f), ROOT))
    return out


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(directory: str, files: Dict[str, bytes]) -> str:
    dist_info = f"{NAME}-{VERSION}.dist-info"
    files[f"{dist_info}/METADATA"] = METADATA.encode()
    files[f"{dist_info}/WHEEL"] = WHEEL.encode()
    record = [f"{p},sha256={_digest(d)},{len(d)}" for p, d in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    name = f"{NAME}-{VERSION}-{TAG}.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
    return name


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> List[str]:  # type: ignore[type-arg]
    return []


get_requires_for_build_sdist = get_requires_for_build_wheel
get_requires_for_build_editable = get_requires_for_build_wheel


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[dict] = None,  # type: ignore[type-arg]
    metadata_directory: Optional[str] = None,
) -> str:
    files = {}
    for rel in _package_files():
        with open(os.path.join(ROOT, rel), "rb") as f:
            files[rel.replace(os.sep, "/")] = f.read()
    return _wheel(wheel_directory, files)


def build_editable(
    wheel_directory: str,
    config_settings: Optional[dict] = None,  # type: ignore[type-arg]
    metadata_directory: Optional[str] = None,
) -> str:
    return _wheel(wheel_directory, {f"{NAME}.pth": (ROOT + "\n").encode()})


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:  # type: ignore[type-arg]
    base = f"{NAME}-{VERSION}"
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as t:
        for rel in _package_files() + ["pyproject.toml", "README.md", "_build/backend.py"]:
            t.add(os.path.join(ROOT, rel), arcname=f"{base}/{rel}")
        info = METADATA.encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(info)
        t.addfile(ti, io.BytesIO(info))
    return name
