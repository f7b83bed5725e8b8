#!/usr/bin/env bash
# Sets up everything Provium needs on a Debian or Ubuntu machine: QEMU, a static
# busybox, a C compiler (the guest agent is built from source), a kernel when
# /boot has none and its headers (the kernel-module example builds against them),
# and the Python package with its test tools in ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages="qemu-system-x86 qemu-utils busybox-static gcc libc6-dev make util-linux"
# Building kernels from source (a profile's kernel_source): kbuild's tools, depmod, and xz for
# the tarball of an apt:linux-source-* package.
packages="$packages flex bison bc libelf-dev libssl-dev lz4 cpio kmod dwarves xz-utils"
python3 -c 'import ensurepip, venv' 2>/dev/null || packages="$packages python3-venv"

# provium's built-in profile wants /boot/vmlinuz-VERSION with /lib/modules/VERSION.
has_kernel=no
for image in /boot/vmlinuz-*; do
    [ -d "/lib/modules/${image#/boot/vmlinuz-}" ] && has_kernel=yes
done
if [ "$has_kernel" = no ]; then
    if grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null; then
        packages="$packages linux-image-generic"
    else
        packages="$packages linux-image-amd64"
    fi
fi

$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends $packages

# Debian and Ubuntu install kernels readable by root only; provium reads them to boot guests.
for image in /boot/vmlinuz-*; do
    [ -r "$image" ] || $sudo chmod 0644 "$image"
done

# Headers of the kernel the built-in profile boots: the newest with its modules.
guest=$(for image in /boot/vmlinuz-*; do
    version=${image#/boot/vmlinuz-}
    [ -d "/lib/modules/$version" ] && echo "$version"
done | sort -V | tail -n 1)
if [ -n "$guest" ] && [ ! -e "/lib/modules/$guest/build/Makefile" ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "linux-headers-$guest"
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
echo "provium is set up: run the tests with .venv/bin/pytest, your own with .venv/bin/provium run PATH"
