#!/usr/bin/env bash
# Recipe of the lab's base root filesystem. lab.sh keys its cache on the sha256 of this file:
# any change here rebuilds the base (and every layer on top of it).
# Usage: recipes/base.sh ROOTFS-DIR   (ROOTFS-DIR must not exist yet)
set -euo pipefail
root=${1:?usage: base.sh ROOTFS-DIR}
suite=bookworm
mirror=http://deb.debian.org/debian

# zstd: a Debian 12 installed on a machine or VM has it (initramfs-tools-core recommends it),
# and clusterctl sends bundle items as zstd streams to hosts that have it; minbase lacks it.
# (A lab test removes it from one host to run the gzip fallback.)
debootstrap --variant=minbase \
	--include=systemd,systemd-sysv,dbus,openssh-server,iproute2,iputils-ping,ca-certificates,procps,sudo,less,zstd \
	"$suite" "$root" "$mirror"

# Identity is per host: lab.sh writes hostname, machine-id and host keys before each first boot.
rm -f "$root/etc/hostname" "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# sshd: key-only root, no DNS lookups, only the ed25519 host key (RSA keygen is slow).
cat >"$root/etc/ssh/sshd_config.d/lab.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
HostKey /etc/ssh/ssh_host_ed25519_key
MaxStartups 200:30:400
MaxSessions 100
CONF
# Fallback when a host was booted without a pre-generated key.
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/lab-hostkey.conf" <<'CONF'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
CONF

# Only /proc/sys/net is writable inside a host: keep systemd-sysctl from failing the boot.
ln -sf /dev/null "$root/etc/sysctl.d/50-pid-max.conf"
ln -sf /dev/null "$root/etc/sysctl.d/99-protect-links.conf"
mkdir -p "$root/etc/systemd/system/systemd-sysctl.service.d"
cat >"$root/etc/systemd/system/systemd-sysctl.service.d/lab.conf" <<'CONF'
[Unit]
ConditionPathIsReadWrite=/proc/sys/net/
CONF

# Units that have nothing to do in a lab host and slow the boot.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
	systemd-timesyncd.service getty@tty1.service console-getty.service; do
	ln -sf /dev/null "$root/etc/systemd/system/$u"
done

# Users: `deploy` (passwordless sudo) and `nopw` (sudo asks for a password: "nopw-lab").
chroot "$root" useradd -m -u 1000 -s /bin/bash deploy
chroot "$root" useradd -m -u 1001 -s /bin/bash nopw
echo 'nopw:nopw-lab' | chroot "$root" chpasswd
echo 'deploy ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/deploy"
echo 'nopw ALL=(ALL) ALL' >"$root/etc/sudoers.d/nopw"
chmod 0440 "$root/etc/sudoers.d/deploy" "$root/etc/sudoers.d/nopw"
for u in root deploy nopw; do
	home=$( [ "$u" = root ] && echo /root || echo "/home/$u" )
	install -d -m 0700 "$root$home/.ssh"
	chroot "$root" chown "$u:$u" "$home/.ssh"
done

# Smaller: no apt lists or package cache in the image.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
