#!/usr/bin/env bash
# Layer recipe: Python 3 for Ansible (the bench's comparison). Runs INSIDE a container booted
# from the layers below, with the machine's network. lab.sh keys the layer on the sha256 of this
# file plus the key of the base.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends python3 python3-apt
apt-get clean
rm -rf /var/lib/apt/lists/*
