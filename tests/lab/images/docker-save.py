#!/usr/bin/env python3
"""Writes a "docker save" image tarball (manifest.json, an image config, one layer), the format
`ctr -n k8s.io images import` accepts, from files given as SRC:DEST[:MODE] and symlinks given as
DEST->TARGET. Deterministic: the same inputs give the same bytes (mtime 0, sorted, root-owned),
so the bundle hash is stable.

usage: docker-save.py [--cmd CMD] OUT.tar REPO:TAG ENTRYPOINT SPEC ...
  ENTRYPOINT  space-separated argv, or "-" for none (then --cmd gives the default command,
              as Docker's busybox image has Cmd ["sh"] and no Entrypoint)
  SPEC        SRC:DEST[:MODE]  a file (mode default 0755)
              DEST->TARGET     a symlink, e.g. /bin/sh->busybox
The config always sets PATH (as Docker images do), so a command like `sh` is found.
"""
import hashlib
import io
import json
import sys
import tarfile

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main():
    args = sys.argv[1:]
    cmd = None
    if args[:1] == ["--cmd"]:
        cmd, args = args[1].split(" "), args[2:]
    if len(args) < 4:
        sys.exit(__doc__)
    out, ref, entrypoint, *specs = args
    entries = []  # (dest, spec) sorted by destination path
    for spec in specs:
        if "->" in spec:
            dest, target = spec.split("->", 1)
            entries.append((dest.lstrip("/"), ("link", target)))
        else:
            src, dest, *mode = spec.split(":")
            entries.append((dest.lstrip("/"), ("file", src, int(mode[0], 8) if mode else 0o755)))
    entries.sort()
    if len({d for d, _ in entries}) != len(entries):
        sys.exit("docker-save.py: a destination is given twice")
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.GNU_FORMAT) as layer:
        dirs = set()
        for dest, what in entries:
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
            if what[0] == "link":
                info = tarfile.TarInfo(dest)
                info.type = tarfile.SYMTYPE
                info.linkname = what[1]
                info.mode = 0o777
                info.mtime = 0
                layer.addfile(info)
            else:
                with open(what[1], "rb") as f:
                    add_bytes(layer, dest, f.read(), what[2])
    layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    conf = {"Env": [PATH]}
    if entrypoint != "-":
        conf["Entrypoint"] = entrypoint.split(" ")
    if cmd:
        conf["Cmd"] = cmd
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": conf,
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
