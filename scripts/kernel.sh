#!/usr/bin/env bash
# Build the arm64 Image (host and guest alike) and the uAPI headers.
source "$(dirname "$0")/lib.sh"

"${KMAKE[@]}" -s rustavailable >/dev/null 2>"$B/rustavailable.log" ||
	{ cat "$B/rustavailable.log" >&2; die "Rust toolchain not usable for the kernel (make rustavailable)"; }
# Kbuild does not notice a new bindgen: drop the generated bindings then.
bg=$(bindgen --version)
if [ "$(cat "$KOUT/.apf-bindgen" 2>/dev/null)" != "$bg" ]; then
	rm -f "$KOUT"/rust/bindings/*_generated.rs "$KOUT"/rust/uapi/*_generated.rs
	echo "$bg" >"$KOUT/.apf-bindgen"
fi
say "building the kernel (LLVM=1, ccache, $JOBS jobs; log: $B/logs/kernel.log)"
run_logged kernel "$B/logs/kernel.log" "${KMAKE[@]}" Image
run_logged headers "$B/logs/headers.log" "${KMAKE[@]}" headers_install INSTALL_HDR_PATH="$B/headers"
