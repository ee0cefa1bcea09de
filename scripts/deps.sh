#!/usr/bin/env bash
# Install what the build needs, skipping what is already there.
# Idempotent: a stamp records a completed run for this script version.
set -euo pipefail

# bindgen 0.72+ emits explicit struct padding as 8-byte aligned opaque
# arrays, which shifts every field after it: in 6.12's task_struct, Rust then
# reads pid 64 bytes off and the task.rs doctest oopses. 0.69.5 is correct.
BINDGEN_VERSION=0.69.5
APT_PKGS="linux-source-6.12 clang lld llvm libclang-dev gcc-aarch64-linux-gnu
	qemu-system-arm flex bison bc libelf-dev libssl-dev cpio ccache rsync
	python3 python3-ply python3-git xz-utils make git"

die() { echo "deps: error: $*" >&2; exit 1; }

missing=()
for p in $APT_PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing apt packages: ${missing[*]}"
	[ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || die "apt-get update failed"
	apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install failed for: ${missing[*]}"
fi

command -v rustup >/dev/null || die "rustup not found; install a Rust toolchain with rustup first"
command -v cargo >/dev/null || die "cargo not found"

rustup component list --installed 2>/dev/null | grep -q '^rust-src' || {
	echo "deps: rustup component add rust-src"
	rustup component add rust-src || die "cannot add rust-src"
}
rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-musl$' || {
	echo "deps: rustup target add aarch64-unknown-linux-musl"
	rustup target add aarch64-unknown-linux-musl || die "cannot add target aarch64-unknown-linux-musl"
}

if ! bindgen --version 2>/dev/null | grep -q "bindgen $BINDGEN_VERSION"; then
	echo "deps: cargo install bindgen-cli $BINDGEN_VERSION (takes a few minutes)"
	cargo install --locked bindgen-cli --version "$BINDGEN_VERSION" || die "cargo install bindgen-cli failed"
fi
for t in clang ld.lld llvm-ar qemu-system-aarch64 aarch64-linux-gnu-gcc ccache; do
	command -v "$t" >/dev/null || die "$t still missing after install"
done
