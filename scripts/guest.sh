#!/usr/bin/env bash
# What the emulated host needs to boot guests: the VMM and the e2e driver
# (static aarch64 builds of vmm/), and the same kernel Image with a guest
# initramfs holding the APF workload. They go into $B/initramfs-extra,
# which initramfs.sh copies into the host's.
# Usage: guest.sh [GUEST_LIST...]  (the lists become the guest's tests.list)
source "$(dirname "$0")/lib.sh"

extra=$B/initramfs-extra
rm -rf "$extra"; mkdir -p "$extra/bin" "$extra/guest"

say "building the VMM (vmm/, static aarch64; log: $B/logs/vmm.log)"
# Cargo reads vmm/.cargo/config.toml (the rust-lld linker) from the cwd.
(cd "$TOP/vmm" && run_logged vmm "$B/logs/vmm.log" \
	cargo build --release --locked --target aarch64-unknown-linux-musl)
for bin in apf-vmm apf-e2e; do
	cp "$TOP/vmm/target/aarch64-unknown-linux-musl/release/$bin" "$extra/bin/"
	aarch64-linux-gnu-strip "$extra/bin/$bin"
done

say "building the guest's macro workload (userspace/compress/; log: $B/logs/compress.log)"
(cd "$TOP/userspace/compress" && run_logged compress "$B/logs/compress.log" \
	cargo build --release --locked --target aarch64-unknown-linux-musl \
	--config "$TOP/vmm/.cargo/config.toml")

cp "$KOUT/arch/arm64/boot/Image" "$extra/guest/Image"
stage=$B/guest-initramfs.d
stage_initramfs "$stage" "$@"
cp "$TOP/userspace/compress/target/aarch64-unknown-linux-musl/release/apf-compress" "$stage/bin/"
aarch64-linux-gnu-strip "$stage/bin/apf-compress"
for prog in apf-workload apf-bench; do
	aarch64-linux-gnu-gcc -static -O2 -Wall -Wextra -Werror -pthread -o "$stage/bin/$prog" \
		"$TOP/userspace/workload/$prog.c" || die "cannot build userspace/workload/$prog.c"
	aarch64-linux-gnu-strip "$stage/bin/$prog"
done
echo guest >"$stage/etc/marker"
pack_cpio "$stage" "$extra/guest/initrd.cpio"
