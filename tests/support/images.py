"""Real images in the test registries: an OCI layout built here, pushed with Debian's ``skopeo``.

The layout is the smallest valid image (one gzip layer holding one file, an image config and an
OCI manifest), written as files: ``skopeo copy oci:DIR:TAG docker://HOST/REPO:TAG`` then pushes
it the way any client does (blob uploads, manifest PUT), through the registry's own auth.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

SKOPEO = "/usr/bin/skopeo"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk and its manifest's digest."""

    path: Path
    tag: str
    digest: str


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def _layer(content: bytes) -> tuple[bytes, bytes]:
    """(gzip layer, uncompressed tar) holding one file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("canary.txt")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


def build_layout(root: Path, tag: str, content: bytes) -> Layout:
    """Write an OCI layout with one image tagged ``tag``; ``content`` makes its digest unique."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer, tar = _layer(content)
    layer_digest, layer_size = _blob(root, layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
    }).encode()
    config_digest, config_size = _blob(root, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }).encode()
    digest, size = _blob(root, manifest)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return Layout(root, tag, digest)


def push(layout: Layout, host: str, repository: str, creds: tuple[str, str] | None, cert_dir: Path,
         tag: str = "") -> None:
    """``skopeo copy`` the layout to ``host/repository:tag`` (default: the layout's tag) over TLS
    trusting ``cert_dir/ca.crt``; ``creds`` None pushes anonymously (a registry without auth)."""
    login = ["--dest-creds", f"{creds[0]}:{creds[1]}"] if creds else ["--dest-no-creds"]
    cmd = [SKOPEO, "--insecure-policy", "copy", "--quiet", "--preserve-digests",
           "--dest-cert-dir", str(cert_dir), *login,
           f"oci:{layout.path}:{layout.tag}", f"docker://{host}/{repository}:{tag or layout.tag}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo push of {repository}:{tag or layout.tag} failed: {done.stderr[-1500:]}")
