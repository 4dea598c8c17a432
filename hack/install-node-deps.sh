#!/usr/bin/env bash
# Installs the host tools the CSI node plugin and its tests run: qemu-img and qemu-storage-daemon for qcow2
# images, nbdfuse to bridge NBD exports onto loop devices (there is no kernel NBD here), mkfs for
# Filesystem volumes and fio for data checks. Idempotent: returns quickly when everything is present.
set -euo pipefail

packages=(qemu-utils qemu-system-common libnbd-bin fuse3 e2fsprogs xfsprogs fio util-linux)
commands=(qemu-img qemu-storage-daemon nbdfuse fusermount3 mkfs.ext4 mkfs.xfs fio losetup)

missing=()
for c in "${commands[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-node-deps: all present (${commands[*]})"
  exit 0
fi

echo "install-node-deps: missing ${missing[*]}; installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
if ! $SUDO apt-get install -y --no-install-recommends "${packages[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${packages[@]}"
fi
echo "install-node-deps: done"
