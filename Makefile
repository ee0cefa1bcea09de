# KVM/arm64 asynchronous page faults: build, boot and test harness.
# See README.md. Every target installs what it needs first (make deps).

B ?= $(CURDIR)/build
export B
S := scripts

# Lists of tests run inside the emulated host, in order.
TEST_LISTS := $(wildcard tests/apf.list) tests/vmm.list tests/e2e.list tests/regression.list
RUN_LISTS := tests/demo.list

.PHONY: all deps tree config kernel selftests guest vmm-test test test-debug test-rt run soak-swap bench check series refresh clean help

all: kernel

help:
	@echo "make run        boot the emulated arm64 KVM host and run the demo"
	@echo "make soak-swap  run e2e-swap and e2e-swap-hidden SOAK_RUNS times each (default 20)"
	@echo "make bench      APF on against hidden: out/bench/ (BENCH_QUICK=1: about 9 min)"
	@echo "make test       build everything and run every test (what CI runs)"
	@echo "make test-debug the APF tests on a KASAN/lockdep/kmemleak host kernel"
	@echo "make test-rt    the preemptible e2e cases with a PREEMPT_RT guest kernel"
	@echo "make check      rustfmt, CLIPPY=1 build and checkpatch on the series"
	@echo "make series     export the patch series with a cover letter to out/series"
	@echo "make tree       assemble build/linux from Debian's source + this repo"
	@echo "make refresh    save commits made inside build/linux back into the repo"

$(B)/.deps-ok: $(S)/deps.sh
	@$(S)/deps.sh
	@mkdir -p $(B) && touch $@

deps: $(B)/.deps-ok

tree: deps
	@$(S)/tree.sh

config: tree
	@$(S)/config.sh

kernel: config
	@$(S)/kernel.sh

selftests: kernel
	@$(S)/selftests.sh

# The VMM and e2e driver (vmm/) and the guest's kernel and initramfs, for
# the emulated host; the guest runs what tests/guest.list says.
guest: kernel
	@$(S)/guest.sh tests/guest.list

# The VMM's and the guest macro workload's unit tests, on the build machine.
vmm-test: deps
	@cd vmm && cargo test --locked
	@cd userspace/compress && cargo test --locked

test: selftests guest vmm-test
	@$(S)/boot.sh test $(TEST_LISTS)

# The heavy lane, not in `make test`: a second host kernel with KASAN,
# lockdep, kmemleak and debug objects (config/debug/), tests/debug.list.
test-debug: selftests guest
	@$(S)/test-debug.sh

# The other heavy lane: a PREEMPT_RT guest kernel (config/rt/) running
# e2e-preempt-full and e2e-migrate-stress.
test-rt: guest
	@$(S)/test-rt.sh

run: guest
	@$(S)/boot.sh run verbose $(RUN_LISTS)

# Soak the swap case (not part of make test): one boot of the emulated
# host, e2e-swap and e2e-swap-hidden from tests/e2e.list SOAK_RUNS times
# each, interleaved, then the pass counts.
SOAK_RUNS ?= 20
soak-swap: guest
	@$(S)/soak-swap.sh $(SOAK_RUNS)

# What APF buys and costs (not part of make test): scripts/bench.sh.
bench: guest
	@$(S)/bench.sh

check: config
	@$(S)/check.sh

series: tree
	@$(S)/series.sh

refresh:
	@$(S)/refresh.sh

clean:
	rm -rf $(B)/kbuild $(B)/selftests $(B)/selftests-gen $(B)/initramfs.d $(B)/*.cpio out
	rm -rf $(B)/initramfs-extra $(B)/guest-initramfs.d vmm/target
