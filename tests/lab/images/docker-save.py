#!/usr/bin/env python3
"""Writes a "docker save" image tarball (manifest.json, an image config, one layer), the format
`ctr -n k8s.io images import` accepts, from files given as SRC:DEST[:MODE]. Deterministic: the
same inputs give the same bytes (mtime 0, sorted, root-owned), so the bundle hash is stable.

usage: docker-save.py OUT.tar REPO:TAG ENTRYPOINT SRC:DEST[:MODE] ...
"""
import hashlib
import io
import json
import sys
import tarfile


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main():
    out, ref, entrypoint, *files = sys.argv[1:]
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.GNU_FORMAT) as layer:
        dirs = set()
        for spec in sorted(files):
            src, dest, *mode = spec.split(":")
            dest = dest.lstrip("/")
            parts = dest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = 0
                    layer.addfile(info)
            with open(src, "rb") as f:
                add_bytes(layer, dest, f.read(), int(mode[0], 8) if mode else 0o755)
    layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {"Entrypoint": entrypoint.split(" ")},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/lab/images/docker-save.py"}],
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id[len("sha256:"):] + "/layer.tar"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]
    ).encode()
    with tarfile.open(out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, config_name, config)
        add_bytes(tar, layer_name, layer_bytes)
        add_bytes(tar, "manifest.json", manifest)


if __name__ == "__main__":
    main()
