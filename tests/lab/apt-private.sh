# shellcheck shell=bash
# Sourced by the lab scripts: a private apt configuration (own sources and lists dir under the
# cache) so the lab can read deb-src and newer suites without touching the machine's apt setup.
#   apt_private SUITE TYPE   -> sets APT_PRIV=(-o ... ) for that suite ("deb" or "deb-src")
LAB_CACHE=${CLUSTERCTL_CACHE:-/var/cache/clusterctl}

apt_private() {
	local suite=$1 type=$2
	local dir="$LAB_CACHE/apt/$suite-$type"
	mkdir -p "$dir/lists/partial" "$dir/parts" "$dir/archives/partial"
	cat >"$dir/parts/lab.sources" <<SRC
Types: $type
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	APT_PRIV=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$dir/parts"
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache::Archives=$dir/archives"
		-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
	# Refresh the lists at most once a day.
	if [ -z "$(find "$dir/lists" -maxdepth 1 -name '*Sources*' -o -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
		apt-get -q "${APT_PRIV[@]}" update >&2
	fi
}
