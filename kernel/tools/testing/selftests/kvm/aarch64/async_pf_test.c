// SPDX-License-Identifier: GPL-2.0-only
/*
 * async_pf_test - asynchronous page faults (APF) for KVM/arm64
 *
 * Exercises the guest ABI and the VMM interface documented in
 * Documentation/virt/kvm/arm/apf.rst:
 *
 *  - discovery through the KVM vendor hypervisor service, and hiding the
 *    feature with KVM_REG_ARM_VENDOR_HYP_BMAP_2;
 *  - PAGE_NOT_PRESENT (an external abort taken from EL0 while the control
 *    block says "not present, token T") and PAGE_READY (a PPI while the
 *    block says "ready, token T"), for one page and for as many pages as
 *    there are slots, plus the synchronous fallbacks: fault at EL1, queue
 *    full, block busy, page already pending, APF disabled;
 *  - ENABLE/DISABLE/ACK semantics, including the wake-all that every
 *    ENABLE queues and parameter validation;
 *  - the KVM_ARM_VCPU_ASYNC_PF_CTRL vCPU attributes used for migration;
 *  - the per-vCPU apf_* statistics;
 *  - a vCPU reset with a fault in flight: the registration is forgotten,
 *    the reset does not wait for the fetch and the old block is never
 *    written again;
 *  - the ABI's edges: APF is hidden until the VMM offers it, cannot be
 *    hidden under a restored registration, is refused to vCPUs with a
 *    virtual EL2, checks attribute ids and subcalls in full width, and an
 *    ACK never lowers the line of a PAGE_READY still in the block;
 *  - a fetch stuck in userfaultfd for good wedges nothing: a VMM whose uffd
 *    has a lower fd number than its KVM files can be killed, a guest's
 *    DISABLE returns, a VMM that closes its KVM files before its uffd does
 *    not hang, and each VM is freed;
 *  - fuzz: random APF hypercalls on two vCPUs at once while a third one
 *    has faults stalled in userfaultfd; every result is one the ABI allows,
 *    the host writes no guest memory but the blocks' reason and token, and
 *    APF still works afterwards;
 *  - teardown_loop: VM after VM ended while a fetch is stalled in
 *    userfaultfd (memslot deleted, vCPU reset, VM freed): nothing waits for
 *    the fetch and no memory is left behind;
 *  - the ABI's corners: a fetch that cannot map the page (a write to a
 *    read-only mapping, a read beyond the end of a memfd) starts no
 *    PAGE_NOT_PRESENT loop and gives the VMM the exit it gets with APF
 *    hidden; a real external abort is no APF; no vGIC, no APF; instruction
 *    aborts; two vCPUs faulting at once; a memslot deleted, and PSCI
 *    CPU_OFF/CPU_ON, with a fault in flight.
 *
 * The pages the guest faults on live in a memslot registered with
 * userfaultfd. The uffd handler thread records every request and only
 * serves a page once the test has released it, so the test decides when a
 * page "arrives" and nothing depends on timing. Pages that the host must
 * fetch synchronously are released up front: a synchronous fault keeps the
 * vCPU in KVM_RUN until the page is served.
 *
 * The host only sends PAGE_NOT_PRESENT for faults taken at EL0, so the
 * accesses run at guest EL0: run_at_el0() saves the callee-saved registers
 * on the EL1 stack and erets to a trampoline that calls an EL0 routine and
 * then issues SVC #0; the SVC handler returns to EL1 right behind the eret.
 * The guest never parks anything: the abort handler records the token,
 * frees the block and skips the faulting load, leaving a poison value.
 *
 * Each subtest runs in its own VM, in a child process, so that one failure
 * does not take the other subtests down.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <linux/arm-smccc.h>
#include <linux/bitfield.h>
#include <linux/psci.h>
#include <linux/userfaultfd.h>
#include <asm/cputype.h>
#include <asm/kvm.h>
#include <asm/kvm_para.h>

#include "kvm_util.h"
#include "processor.h"
#include "gic.h"
#include "vgic.h"
#include "userfaultfd_util.h"

kvm_static_assert(sizeof(struct kvm_vcpu_pv_apf_data) == 64);

/* In the FEATURES bitmap, function 96 is bit 0 of w3. */
#define APF_FEATURES_W3_BIT	BIT(ARM_SMCCC_KVM_FUNC_ASYNC_PF - 96)

#define APF_SLOTS		64	/* ASYNC_PF_PER_VCPU */
#define APF_UNKNOWN_SUBCALL	42

/* Guest physical layout; everything below is identity mapped. */
#define TEST_SLOT		1
#define BLOCK_SLOT		2
#define BLOCK2_SLOT		3
#define RO_SLOT			4

#define TEST_GPA		0xc0000000ULL	/* userfaultfd-backed pages */
#define BLOCK_GPA		0xd0000000ULL	/* two one-page memslots */
#define RO_GPA			0xe0000000ULL	/* read-only memslot */
#define NOSLOT_GPA		0xf0000000ULL	/* no memslot at all */

/*
 * Test pages are "stride" bytes apart: the larger of the guest and host
 * page sizes, so each one is its own uffd page and its own guest page.
 * Pages 0..APF_SLOTS-1 are used for the queue-filling accesses, the ones
 * after that have a fixed role in the statistics subtest.
 */
#define PG_FULL			APF_SLOTS	/* access after the queue is full */
#define PG_HOLD			(APF_SLOTS + 1)	/* its PAGE_READY is held un-acked */
#define PG_BUSY			(APF_SLOTS + 2)	/* accessed while the block is busy */
#define PG_EL1			(APF_SLOTS + 3)	/* accessed from EL1 */
#define PG_REPEAT		(APF_SLOTS + 4)	/* accessed twice while pending */
#define PG_DISABLED		(APF_SLOTS + 5)	/* accessed with APF disabled */
#define NR_TEST_PAGES		(APF_SLOTS + 6)

/* Stage 1 descriptor bits */
#define PTE_AP_EL0		BIT_ULL(6)	/* AP[1]: EL0 access */
#define PTE_AP_RDONLY		BIT_ULL(7)	/* AP[2]: read-only at EL0 and EL1 */
#define PTE_UXN			BIT_ULL(54)

/* ESR_ELx */
#define ESR_EC_DABT_LOW		0x24
#define ESR_FSC_MASK		0x3f
#define ESR_FSC_SEA		0x10	/* synchronous external abort */

#define EL0_SPSR	(PSR_MODE_EL0t | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT)
#define EL1_SPSR	(PSR_MODE_EL1h | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT)

#define EL0_MAX_ACCESSES	80
#define EL0_VAL_REG		5	/* register loaded at el0_load_insn */
#define EL0_POISON		0xdead0bad0bad0deaULL

#define MAX_EVENTS		256

enum {
	STAGE_DONE = 1000,
	STAGE_NOT_PRESENT,	/* arg: token */
	STAGE_QUEUED,
	STAGE_PENDING,
	STAGE_RUNNING,
	STAGE_CHECK_BLOCK,	/* arg: value the BLOCK attribute must have */
	STAGE_STATS_BASE,
	STAGE_STATS_END,
};

#define GUEST_CHECK_BLOCK(val)	GUEST_SYNC2(STAGE_CHECK_BLOCK, (val))

enum {
	APF_STAT_NOT_PRESENT,
	APF_STAT_READY,
	APF_STAT_READY_MAPPED,
	APF_STAT_SYNC_NOT_EL0,
	APF_STAT_SYNC_DISABLED,
	APF_STAT_SYNC_BUSY,
	APF_STAT_SYNC_QUEUE_FULL,
	APF_STAT_SYNC_REPEAT,
	APF_STAT_SYNC_REFAULT,
	NR_APF_STATS,
};

static const char * const apf_stat_names[NR_APF_STATS] = {
	[APF_STAT_NOT_PRESENT]		= "apf_not_present",
	[APF_STAT_READY]		= "apf_ready",
	[APF_STAT_READY_MAPPED]		= "apf_ready_mapped",
	[APF_STAT_SYNC_NOT_EL0]		= "apf_sync_not_el0",
	[APF_STAT_SYNC_DISABLED]	= "apf_sync_disabled",
	[APF_STAT_SYNC_BUSY]		= "apf_sync_busy",
	[APF_STAT_SYNC_QUEUE_FULL]	= "apf_sync_queue_full",
	[APF_STAT_SYNC_REPEAT]		= "apf_sync_repeat",
	[APF_STAT_SYNC_REFAULT]		= "apf_sync_refault",
};

/* Filled in by the host before the first run. */
static struct {
	uint64_t stride;
	uint64_t el0_args;		/* GVA of struct el0_args */
	uint64_t el0_sp;		/* initial SP_EL0 */
	uint64_t block_gpa[2];		/* in two different memslots */
	uint64_t straddle_gpa;		/* last 32 bytes of BLOCK_SLOT */
	uint32_t expected_irq;
	uint32_t nr_vcpus;
	bool real_sea_ok;		/* an EL0 abort may be a real one */
} params;

/* What the guest saw; written by its exception handlers. */
static struct {
	uint32_t nr_not_present;
	uint32_t np_token[MAX_EVENTS];
	uint64_t np_addr[MAX_EVENTS];
	uint32_t nr_ready;		/* wake-alls included */
	uint32_t ready_token[MAX_EVENTS];
	uint32_t nr_wake_all;
	uint32_t nr_stray_irq;		/* PPI with no PAGE_READY in the block */
	uint32_t nr_real_sea;		/* with params.real_sea_ok; the last: */
	uint32_t sea_reason;
	uint64_t sea_esr, sea_far, sea_pc;
} ev;

/* Statistics deltas the guest expects, read back by the host. */
static struct {
	uint64_t val[NR_APF_STATS];
} exp_stats;

static struct kvm_vcpu_pv_apf_data *apf_block;
static uint32_t apf_irq;

static inline uint64_t page_pattern(uint32_t idx)
{
	return 0x4150465000000000ULL | ((uint64_t)idx << 8) | 0xa5;
}

/* ---------------------------------------------------------------------
 * EL0 support
 * ---------------------------------------------------------------------
 */
struct el0_args {
	uint64_t nr;
	uint64_t addrs;			/* GVA of addr[] */
	uint64_t vals;			/* GVA of val[] */
	uint64_t addr[EL0_MAX_ACCESSES];
	uint64_t val[EL0_MAX_ACCESSES];
};

/* The address of a symbol defined in the asm block below. */
#define ASM_SYM(sym) ({							\
	uint64_t __addr;						\
									\
	asm("adrp %0, " #sym "\n\tadd %0, %0, :lo12:" #sym : "=r"(__addr));	\
	__addr;								\
})

static void run_at_el0(uint64_t fn, uint64_t arg, uint64_t sp_el0)
{
	void (*el0_call)(uint64_t fn, uint64_t arg, uint64_t sp_el0);

	el0_call = (void *)ASM_SYM(__run_at_el0);
	el0_call(fn, arg, sp_el0);
}

/*
 * .text.el0 holds the only code that runs at EL0; the host makes its pages
 * readable and executable from EL0 (and keeps them executable at EL1).
 *
 * el0_trampoline: x19 = routine, x0 = its argument. Returns to EL1 with
 * SVC #0, which guest_svc_handler() turns into a jump to el0_return.
 *
 * el0_read_pages: x0 = struct el0_args; for each i, val[i] = *addr[i].
 * The load at el0_load_insn is the access that may take an APF abort.
 *
 * el0_write_pages: the same with *addr[i] = val[i], the store at
 * el0_store_insn.
 */
asm("	.pushsection .text.el0, \"ax\"\n"
"	.balign	64\n"
"	.global	el0_text_start\n"
"el0_text_start:\n"
"	.type	el0_trampoline, %function\n"
"el0_trampoline:\n"
"	blr	x19\n"
"	svc	#0\n"
"	b	.\n"
"	.size	el0_trampoline, . - el0_trampoline\n"
"\n"
"	.global	el0_read_pages\n"
"	.type	el0_read_pages, %function\n"
"el0_read_pages:\n"
"	ldr	x1, [x0]\n"
"	ldp	x2, x3, [x0, #8]\n"
"	cbz	x1, 2f\n"
"1:	ldr	x4, [x2], #8\n"
"	.global	el0_load_insn\n"
"el0_load_insn:\n"
"	ldr	x" __stringify(EL0_VAL_REG) ", [x4]\n"
"	str	x" __stringify(EL0_VAL_REG) ", [x3], #8\n"
"	subs	x1, x1, #1\n"
"	b.ne	1b\n"
"2:	ret\n"
"	.size	el0_read_pages, . - el0_read_pages\n"
"\n"
"	.global	el0_write_pages\n"
"	.type	el0_write_pages, %function\n"
"el0_write_pages:\n"
"	ldr	x1, [x0]\n"
"	ldp	x2, x3, [x0, #8]\n"
"	cbz	x1, 2f\n"
"1:	ldr	x4, [x2], #8\n"
"	ldr	x" __stringify(EL0_VAL_REG) ", [x3], #8\n"
"	.global	el0_store_insn\n"
"el0_store_insn:\n"
"	str	x" __stringify(EL0_VAL_REG) ", [x4]\n"
"	subs	x1, x1, #1\n"
"	b.ne	1b\n"
"2:	ret\n"
"	.size	el0_write_pages, . - el0_write_pages\n"
"	.global	el0_text_end\n"
"el0_text_end:\n"
"	.popsection\n"
"\n"
/*
 * run_at_el0(fn, arg, sp_el0): call fn(arg) at EL0 and come back. The
 * frame with the callee-saved registers stays on SP_EL1, which the EL0
 * exceptions taken meanwhile leave as they found it.
 */
"	.pushsection .text, \"ax\"\n"
"	.global	__run_at_el0\n"
"	.type	__run_at_el0, %function\n"
"__run_at_el0:\n"
"	stp	x29, x30, [sp, #-96]!\n"
"	mov	x29, sp\n"
"	stp	x19, x20, [sp, #16]\n"
"	stp	x21, x22, [sp, #32]\n"
"	stp	x23, x24, [sp, #48]\n"
"	stp	x25, x26, [sp, #64]\n"
"	stp	x27, x28, [sp, #80]\n"
"	msr	sp_el0, x2\n"
"	mov	x19, x0\n"
"	mov	x0, x1\n"
"	adrp	x1, el0_trampoline\n"
"	add	x1, x1, :lo12:el0_trampoline\n"
"	msr	elr_el1, x1\n"
"	mov	x1, #" __stringify(EL0_SPSR) "\n"
"	msr	spsr_el1, x1\n"
"	eret\n"
"	.global	el0_return\n"
"el0_return:\n"
"	ldp	x27, x28, [sp, #80]\n"
"	ldp	x25, x26, [sp, #64]\n"
"	ldp	x23, x24, [sp, #48]\n"
"	ldp	x21, x22, [sp, #32]\n"
"	ldp	x19, x20, [sp, #16]\n"
"	ldp	x29, x30, [sp], #96\n"
"	ret\n"
"	.size	__run_at_el0, . - __run_at_el0\n"
"	.popsection\n");

/* SVC #0 from the trampoline: resume at EL1, behind the eret. */
static void guest_svc_handler(struct ex_regs *regs)
{
	regs->pc = ASM_SYM(el0_return);
	regs->pstate = EL1_SPSR;
}

static inline uint64_t test_page(uint32_t idx)
{
	return TEST_GPA + idx * params.stride;
}

/* Read the first word of test pages first .. first + nr - 1 at EL0. */
static void guest_el0_read(uint32_t first, uint32_t nr)
{
	struct el0_args *args = (struct el0_args *)params.el0_args;
	uint32_t i;

	GUEST_ASSERT(nr <= EL0_MAX_ACCESSES);

	args->nr = nr;
	args->addrs = (uint64_t)args->addr;
	args->vals = (uint64_t)args->val;
	for (i = 0; i < nr; i++) {
		args->addr[i] = test_page(first + i);
		args->val[i] = 0;
	}

	run_at_el0(ASM_SYM(el0_read_pages), (uint64_t)args, params.el0_sp);
}

static uint64_t el0_val(uint32_t i)
{
	return ((struct el0_args *)params.el0_args)->val[i];
}

/* ---------------------------------------------------------------------
 * Guest side of the protocol
 * ---------------------------------------------------------------------
 */
static struct arm_smccc_res apf_hvc(uint64_t subcall, uint64_t arg2,
				    uint64_t arg3)
{
	struct arm_smccc_res res;

	smccc_hvc(ARM_SMCCC_VENDOR_HYP_KVM_ASYNC_PF_FUNC_ID, subcall, arg2,
		  arg3, 0, 0, 0, 0, &res);
	return res;
}

static long apf_call(uint64_t subcall, uint64_t arg2, uint64_t arg3)
{
	return (long)apf_hvc(subcall, arg2, arg3).a0;
}

static bool token_valid(uint32_t token)
{
	return token && token != KVM_ASYNC_PF_WAKE_ALL_TOKEN;
}

/*
 * PAGE_NOT_PRESENT. A real guest would park the task on the token; this
 * one records it, frees the block, skips the load (with a poison value in
 * the destination register) or the store and carries on at EL0. Only with
 * params.real_sea_ok may an abort be a real one: it is recorded and the
 * access skipped alike.
 */
static void guest_el0_abort_handler(struct ex_regs *regs)
{
	uint64_t esr = read_sysreg(esr_el1);
	uint64_t far = read_sysreg(far_el1);
	uint32_t reason, token, n;

	__GUEST_ASSERT((esr & ESR_FSC_MASK) == ESR_FSC_SEA,
		       "Unexpected abort from EL0: ESR 0x%lx FAR 0x%lx PC 0x%lx",
		       esr, far, regs->pc);
	__GUEST_ASSERT(apf_block,
		       "External abort from EL0 before APF was enabled, FAR 0x%lx",
		       far);

	reason = READ_ONCE(apf_block->reason);
	dmb(ishld);
	token = READ_ONCE(apf_block->token);
	if (reason != KVM_PV_REASON_PAGE_NOT_PRESENT && params.real_sea_ok) {
		ev.sea_reason = reason;
		ev.sea_esr = esr;
		ev.sea_far = far;
		ev.sea_pc = regs->pc;
		WRITE_ONCE(ev.nr_real_sea, ev.nr_real_sea + 1);
		goto skip;
	}
	__GUEST_ASSERT(reason == KVM_PV_REASON_PAGE_NOT_PRESENT,
		       "External abort from EL0 with reason %u, FAR 0x%lx",
		       reason, far);
	__GUEST_ASSERT(regs->pc == ASM_SYM(el0_load_insn) ||
		       regs->pc == ASM_SYM(el0_store_insn),
		       "PAGE_NOT_PRESENT at PC 0x%lx, FAR 0x%lx", regs->pc, far);

	n = ev.nr_not_present;
	GUEST_ASSERT(n < MAX_EVENTS);
	ev.np_token[n] = token;
	ev.np_addr[n] = far;
	WRITE_ONCE(ev.nr_not_present, n + 1);

	WRITE_ONCE(apf_block->reason, 0);

skip:
	if (regs->pc == ASM_SYM(el0_load_insn))
		regs->regs[EL0_VAL_REG] = EL0_POISON;
	regs->pc += 4;
}

/* PAGE_READY: consume the block, then ACK so the host can send more. */
static void guest_irq_handler(struct ex_regs *regs)
{
	uint32_t intid = gic_get_and_ack_irq();
	uint32_t reason = 0, token = 0, n;

	if (intid == IAR_SPURIOUS)
		return;
	__GUEST_ASSERT(intid == apf_irq, "Unexpected interrupt %u", intid);

	if (apf_block) {
		reason = READ_ONCE(apf_block->reason);
		dmb(ishld);
		token = READ_ONCE(apf_block->token);
	}

	if (reason == KVM_PV_REASON_PAGE_READY) {
		n = ev.nr_ready;
		GUEST_ASSERT(n < MAX_EVENTS);
		ev.ready_token[n] = token;
		if (token == KVM_ASYNC_PF_WAKE_ALL_TOKEN)
			ev.nr_wake_all++;
		WRITE_ONCE(ev.nr_ready, n + 1);
		WRITE_ONCE(apf_block->reason, 0);
	} else {
		ev.nr_stray_irq++;
	}

	/* The host must see the block free before it may send the next. */
	dmb(ish);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	gic_set_eoi(intid);
}

/*
 * Interrupts stay masked at EL1 except in this window, so that "is there
 * an event?" can be checked and waited for without racing the handler.
 */
static void guest_irq_window(void)
{
	local_irq_enable();
	isb();
	local_irq_disable();
}

/* WFI wakes up on a pending interrupt even while it is masked. */
static void guest_wait_ready(uint32_t nr_ready)
{
	while (READ_ONCE(ev.nr_ready) < nr_ready) {
		wfi();
		guest_irq_window();
	}
}

/* Wait for a PAGE_READY to land in the block, without taking the PPI. */
static void guest_wait_block_ready(void)
{
	while (READ_ONCE(apf_block->reason) != KVM_PV_REASON_PAGE_READY)
		wfi();
}

/* Nothing was delivered: call after a round trip to the host. */
static void guest_assert_quiet(uint32_t nr_ready)
{
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->reason), 0);
	GUEST_ASSERT(!gic_irq_get_pending(apf_irq));
	guest_irq_window();
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_ready), nr_ready);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_stray_irq), 0);
}

static void guest_setup(void)
{
	uint64_t mmfr1 = read_sysreg_s(SYS_ID_AA64MMFR1_EL1);
	struct arm_smccc_res res;

	/* EL1 reads and writes EL0-accessible pages: keep PAN off. */
	if (FIELD_GET(ID_AA64MMFR1_EL1_PAN_MASK, mmfr1))
		set_pstate_pan(0);

	res = apf_hvc(KVM_ASYNC_PF_CALL_IRQ, 0, 0);
	GUEST_ASSERT_EQ(res.a0, SMCCC_RET_SUCCESS);
	apf_irq = res.a1;
	GUEST_ASSERT_EQ(apf_irq, params.expected_irq);

	gic_init(GIC_V3, params.nr_vcpus);
	gic_irq_enable(apf_irq);
}

/* Register block @idx and consume the wake-all that ENABLE queues. */
static void guest_enable(int idx)
{
	uint32_t nr_ready = READ_ONCE(ev.nr_ready);
	uint64_t gpa = params.block_gpa[idx];

	memset((void *)gpa, 0, sizeof(struct kvm_vcpu_pv_apf_data));
	apf_block = (void *)gpa;

	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ENABLE, gpa, KVM_ASYNC_PF_ENABLED),
			SMCCC_RET_SUCCESS);

	guest_wait_ready(nr_ready + 1);
	GUEST_ASSERT_EQ(ev.ready_token[nr_ready], KVM_ASYNC_PF_WAKE_ALL_TOKEN);
}

/*
 * One complete round on @page: not present with token T, PAGE_READY for T,
 * then the retry reads the data. With @host_releases the host gets the
 * token through STAGE_NOT_PRESENT and releases the page; otherwise the page
 * must have been released up front.
 */
static void guest_apf_round(uint32_t page, bool host_releases)
{
	uint32_t np = READ_ONCE(ev.nr_not_present);
	uint32_t ready = READ_ONCE(ev.nr_ready);
	uint32_t token;

	guest_el0_read(page, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
	GUEST_ASSERT_EQ(ev.np_addr[np], test_page(page));
	GUEST_ASSERT_EQ(el0_val(0), EL0_POISON);
	token = ev.np_token[np];
	__GUEST_ASSERT(token_valid(token), "Bad token 0x%x", token);

	if (host_releases)
		GUEST_SYNC2(STAGE_NOT_PRESENT, token);

	guest_wait_ready(ready + 1);
	GUEST_ASSERT_EQ(ev.ready_token[ready], token);

	guest_el0_read(page, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(page));
}

static void snapshot_block(struct kvm_vcpu_pv_apf_data *copy,
			   struct kvm_vcpu_pv_apf_data *blk)
{
	memcpy(copy, blk, sizeof(*copy));
}

static void assert_block_unchanged(struct kvm_vcpu_pv_apf_data *copy,
				   struct kvm_vcpu_pv_apf_data *blk)
{
	__GUEST_ASSERT(!memcmp(copy, blk, sizeof(*copy)),
		       "Block at 0x%lx written: reason %u token 0x%x",
		       (uint64_t)blk, blk->reason, blk->token);
}

/* The block as a vCPU reset finds it, checked after the reset */
static struct kvm_vcpu_pv_apf_data reset_block;

/* ---------------------------------------------------------------------
 * Host side
 * ---------------------------------------------------------------------
 */

/*
 * The pager: the uffd handler thread records requests for test pages and
 * serves a page only once it is released (or, with serve_at, once it has
 * been requested that many times).
 */
struct test_page_state {
	bool released;
	bool served;
	uint32_t nr_requests;
	uint32_t serve_at;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int uffd;
	uint8_t *hva;
	uint64_t stride;
	uint64_t *buf;
	struct test_page_state page[NR_TEST_PAGES];
} pager = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.uffd = -1,
};

static void pager_serve_locked(uint32_t idx)
{
	struct uffdio_copy copy = {
		.dst = (uint64_t)(pager.hva + idx * pager.stride),
		.src = (uint64_t)pager.buf,
		.len = pager.stride,
	};
	uint64_t i;
	int ret;

	for (i = 0; i < pager.stride / sizeof(uint64_t); i++)
		pager.buf[i] = page_pattern(idx);

	ret = ioctl(pager.uffd, UFFDIO_COPY, &copy);
	TEST_ASSERT(!ret || errno == EEXIST,
		    "UFFDIO_COPY of test page %u failed, errno %d", idx, errno);
	pager.page[idx].served = true;
}

static void pager_wake_locked(uint32_t idx)
{
	struct uffdio_range range = {
		.start = (uint64_t)(pager.hva + idx * pager.stride),
		.len = pager.stride,
	};

	TEST_ASSERT(!ioctl(pager.uffd, UFFDIO_WAKE, &range),
		    "UFFDIO_WAKE of test page %u failed, errno %d", idx, errno);
}

static int pager_handle_fault(int uffd_mode, int uffd, struct uffd_msg *msg)
{
	uint64_t off = msg->arg.pagefault.address - (uint64_t)pager.hva;
	struct test_page_state *p;
	uint32_t idx;

	TEST_ASSERT(off < NR_TEST_PAGES * pager.stride,
		    "uffd fault outside the test pages: 0x%llx",
		    msg->arg.pagefault.address);
	idx = off / pager.stride;

	pthread_mutex_lock(&pager.lock);
	p = &pager.page[idx];
	p->nr_requests++;
	if (p->served)
		pager_wake_locked(idx);
	else if (p->released || (p->serve_at && p->nr_requests >= p->serve_at))
		pager_serve_locked(idx);
	pthread_cond_broadcast(&pager.cond);
	pthread_mutex_unlock(&pager.lock);

	return 0;
}

static void pager_release(uint32_t first, uint32_t nr)
{
	uint32_t idx;

	pthread_mutex_lock(&pager.lock);
	for (idx = first; idx < first + nr; idx++) {
		struct test_page_state *p = &pager.page[idx];

		p->released = true;
		if (p->nr_requests && !p->served)
			pager_serve_locked(idx);
	}
	pthread_mutex_unlock(&pager.lock);
}

static void pager_serve_at(uint32_t idx, uint32_t nr_requests)
{
	pthread_mutex_lock(&pager.lock);
	pager.page[idx].serve_at = nr_requests;
	pthread_mutex_unlock(&pager.lock);
}

static void pager_wait_requests(uint32_t idx, uint32_t nr_requests)
{
	pthread_mutex_lock(&pager.lock);
	while (pager.page[idx].nr_requests < nr_requests)
		pthread_cond_wait(&pager.cond, &pager.lock);
	pthread_mutex_unlock(&pager.lock);
}

static struct test_page_state pager_state(uint32_t idx)
{
	struct test_page_state state;

	pthread_mutex_lock(&pager.lock);
	state = pager.page[idx];
	pthread_mutex_unlock(&pager.lock);
	return state;
}

/*
 * A fetch that the pager served cannot be seen to end; give the worker
 * that runs it time to, so that a late write to guest memory is caught by
 * the checks that follow.
 */
static void apf_settle(void)
{
	usleep(200 * 1000);
}

/*
 * If the test dies with faults still blocked in userfaultfd, closing the
 * uffd first lets them complete; otherwise destroying the vCPU would wait
 * for the async work forever.
 */
static void pager_atexit(void)
{
	if (pager.uffd >= 0)
		close(pager.uffd);
}

#define APF_MAX_VCPUS		3

struct apf_vm {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpu;		/* vcpus[0] */
	struct kvm_vcpu *vcpus[APF_MAX_VCPUS];
	struct uffd_desc *uffd;
	int gic_fd;		/* holds a reference to the VM */
};

static void mark_el0_accessible(struct kvm_vm *vm, uint64_t gva, uint64_t len)
{
	uint64_t end = gva + len;

	for (; gva < end; gva += vm->page_size)
		*virt_get_pte_hva(vm, gva) |= PTE_AP_EL0;
}

/* Flags of apf_vm_create_flags() */
#define APF_VM_OFFER		BIT(0)	/* offer APF in BMAP_2 */
#define APF_VM_NO_VGIC		BIT(1)	/* no in-kernel vGIC */
#define APF_VM_PSCI		BIT(2)	/* PSCI 0.2: CPU_ON, CPU_OFF */
#define APF_VM_PMU		BIT(3)	/* vCPUs with a PMU */

static void apf_vm_create_flags(struct apf_vm *t, void *guest_code,
				unsigned int nr_vcpus, unsigned int flags)
{
	uint64_t stride, npages, gva, sctlr, bmap;
	struct kvm_vcpu_init init;
	struct kvm_vm *vm;
	unsigned int i;
	int gic_fd;

	TEST_ASSERT(nr_vcpus <= APF_MAX_VCPUS, "Too many vCPUs");
	if (flags & (APF_VM_PSCI | APF_VM_PMU)) {
		vm = vm_create(nr_vcpus);
		vm_ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init);
		if (flags & APF_VM_PSCI)
			init.features[0] |= BIT(KVM_ARM_VCPU_PSCI_0_2);
		if (flags & APF_VM_PMU)
			init.features[0] |= BIT(KVM_ARM_VCPU_PMU_V3);
		for (i = 0; i < nr_vcpus; i++)
			t->vcpus[i] = aarch64_vcpu_add(vm, i, &init, guest_code);
	} else {
		vm = vm_create_with_vcpus(nr_vcpus, guest_code, t->vcpus);
	}
	t->vm = vm;
	t->vcpu = t->vcpus[0];
	t->uffd = NULL;

	vm_init_descriptor_tables(vm);
	vm_install_sync_handler(vm, VECTOR_SYNC_LOWER_64, ESR_EC_SVC64,
				guest_svc_handler);
	vm_install_sync_handler(vm, VECTOR_SYNC_LOWER_64, ESR_EC_DABT_LOW,
				guest_el0_abort_handler);
	vm_install_exception_handler(vm, VECTOR_IRQ_CURRENT, guest_irq_handler);

	/* Leave PSTATE.PAN alone on exception entry, the guest clears it. */
	for (i = 0; i < nr_vcpus; i++) {
		vcpu_init_descriptor_tables(t->vcpus[i]);
		vcpu_get_reg(t->vcpus[i], KVM_ARM64_SYS_REG(SYS_SCTLR_EL1), &sctlr);
		vcpu_set_reg(t->vcpus[i], KVM_ARM64_SYS_REG(SYS_SCTLR_EL1),
			     sctlr | SCTLR_EL1_SPAN);
	}

	stride = max_t(uint64_t, vm->page_size, getpagesize());
	npages = stride / vm->page_size;

	/* The pages the guest faults on: EL0 read/write, EL1 read/write. */
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, TEST_GPA,
				    TEST_SLOT, NR_TEST_PAGES * npages, 0);
	virt_map(vm, TEST_GPA, TEST_GPA, NR_TEST_PAGES * npages);
	mark_el0_accessible(vm, TEST_GPA, NR_TEST_PAGES * stride);

	/* Two adjacent memslots for the control blocks, EL1 only. */
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, BLOCK_GPA,
				    BLOCK_SLOT, npages, 0);
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, BLOCK_GPA + stride,
				    BLOCK2_SLOT, npages, 0);
	virt_map(vm, BLOCK_GPA, BLOCK_GPA, 2 * npages);

	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, RO_GPA, RO_SLOT,
				    npages, KVM_MEM_READONLY);

	/*
	 * EL0 code: AP[2:1] = 0b11 (read-only at both ELs; EL0-writable
	 * pages would be PXN at EL1) and UXN clear.
	 */
	for (gva = ASM_SYM(el0_text_start) & ~((uint64_t)vm->page_size - 1);
	     gva < ASM_SYM(el0_text_end); gva += vm->page_size) {
		uint64_t *pte = virt_get_pte_hva(vm, gva);

		*pte = (*pte | PTE_AP_EL0 | PTE_AP_RDONLY) & ~PTE_UXN;
	}

	/* EL0 data: struct el0_args, with SP_EL0 at the top of the page. */
	gva = vm_vaddr_alloc(vm, vm->page_size, KVM_UTIL_MIN_VADDR);
	mark_el0_accessible(vm, gva, vm->page_size);

	params.stride = stride;
	params.el0_args = gva;
	params.el0_sp = gva + vm->page_size;
	params.block_gpa[0] = BLOCK_GPA;
	params.block_gpa[1] = BLOCK_GPA + stride;
	params.straddle_gpa = BLOCK_GPA + stride - 32;
	params.expected_irq = KVM_ASYNC_PF_DEFAULT_IRQ;
	params.nr_vcpus = nr_vcpus;
	sync_global_to_guest(vm, params);

	t->gic_fd = -1;
	if (!(flags & APF_VM_NO_VGIC)) {
		gic_fd = vgic_v3_setup(vm, nr_vcpus, 64);
		__TEST_REQUIRE(gic_fd >= 0, "Failed to create a vgic-v3, skipping");
		t->gic_fd = gic_fd;
	}

	/* KVM hides APF until the VMM offers it. */
	if (flags & APF_VM_OFFER) {
		vcpu_get_reg(t->vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
		vcpu_set_reg(t->vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2,
			     bmap | BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF));
	}
}

static void __apf_vm_create(struct apf_vm *t, void *guest_code,
			    unsigned int nr_vcpus, bool offer)
{
	apf_vm_create_flags(t, guest_code, nr_vcpus, offer ? APF_VM_OFFER : 0);
}

static void apf_vm_create(struct apf_vm *t, void *guest_code)
{
	__apf_vm_create(t, guest_code, 1, true);
}

static void apf_vm_start_pager(struct apf_vm *t)
{
	pager.hva = addr_gpa2hva(t->vm, TEST_GPA);
	pager.stride = params.stride;
	pager.buf = malloc(pager.stride);
	TEST_ASSERT(pager.buf, "malloc() failed");
	memset(pager.page, 0, sizeof(pager.page));

	t->uffd = uffd_setup_demand_paging(UFFDIO_REGISTER_MODE_MISSING, 0,
					   pager.hva,
					   NR_TEST_PAGES * pager.stride, 1,
					   pager_handle_fault);
	pager.uffd = t->uffd->uffd;
	atexit(pager_atexit);
}

static void apf_vm_destroy(struct apf_vm *t)
{
	if (t->uffd) {
		/* Nothing may stay blocked in userfaultfd. */
		pager_release(0, NR_TEST_PAGES);
		pager.uffd = -1;
		uffd_stop_demand_paging(t->uffd);
		free(pager.buf);
	}
	kvm_vm_free(t->vm);
}

static uint64_t run_vcpu(struct kvm_vcpu *vcpu, struct ucall *uc)
{
	for (;;) {
		vcpu_run(vcpu);

		switch (get_ucall(vcpu, uc)) {
		case UCALL_SYNC:
			return uc->args[0];
		case UCALL_DONE:
			return STAGE_DONE;
		case UCALL_PRINTF:
			REPORT_GUEST_PRINTF(*uc);
			break;
		case UCALL_ABORT:
			REPORT_GUEST_ASSERT(*uc);
			break;
		case UCALL_UNHANDLED:
			TEST_FAIL("Unexpected guest exception, vector 0x%lx, ESR.EC 0x%lx",
				  uc->args[0], uc->args[1]);
			break;
		default:
			TEST_FAIL("Unexpected exit: %s",
				  exit_reason_str(vcpu->run->exit_reason));
		}
	}
}

static void run_to_stage(struct kvm_vcpu *vcpu, uint64_t stage,
			 struct ucall *uc)
{
	uint64_t got = run_vcpu(vcpu, uc);

	TEST_ASSERT(got == stage, "Guest reached stage %lu, expected %lu",
		    got, stage);
}

/* Run to GUEST_DONE, checking the BLOCK attribute whenever asked to. */
static void run_to_done(struct kvm_vcpu *vcpu)
{
	struct ucall uc;
	uint64_t stage, block;

	while ((stage = run_vcpu(vcpu, &uc)) != STAGE_DONE) {
		TEST_ASSERT(stage == STAGE_CHECK_BLOCK, "Unexpected stage %lu",
			    stage);
		vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
				     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block);
		TEST_ASSERT(block == uc.args[1],
			    "BLOCK attribute is 0x%lx, expected 0x%lx",
			    block, uc.args[1]);
	}
}

static void read_apf_stats(struct kvm_vcpu *vcpu, uint64_t *val)
{
	struct kvm_stats_header header;
	struct kvm_stats_desc *descs, *desc;
	bool found[NR_APF_STATS] = {};
	int fd, i, j;

	fd = vcpu_get_stats_fd(vcpu);
	read_stats_header(fd, &header);
	descs = read_stats_descriptors(fd, &header);

	for (i = 0; i < header.num_desc; i++) {
		desc = get_stats_descriptor(descs, i, &header);
		for (j = 0; j < NR_APF_STATS; j++) {
			if (strcmp(desc->name, apf_stat_names[j]))
				continue;
			read_stat_data(fd, &header, desc, &val[j], 1);
			found[j] = true;
		}
	}

	for (j = 0; j < NR_APF_STATS; j++)
		TEST_ASSERT(found[j], "No vCPU statistic '%s'", apf_stat_names[j]);

	free(descs);
	close(fd);
}

/* ---------------------------------------------------------------------
 * 1. Discovery
 *
 * Asserted: KVM_HAS_DEVICE_ATTR reports the IRQ and BLOCK attributes, and
 * KVM_REG_ARM_VENDOR_HYP_BMAP_2 reads back with the APF bit the VMM set.
 * In the guest: the vendor hypervisor Call UID is KVM's UID, FEATURES has
 * its own bit in w0 and function 96 (bit 0 of w3), and VERSION, SLOTS and
 * IRQ return SUCCESS with x1 = 0x00010000, 64 and 18 (the default PPI).
 * ---------------------------------------------------------------------
 */
static void guest_discovery(void)
{
	struct arm_smccc_res res;

	smccc_hvc(ARM_SMCCC_VENDOR_HYP_CALL_UID_FUNC_ID, 0, 0, 0, 0, 0, 0, 0, &res);
	GUEST_ASSERT_EQ(res.a0, ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_0);
	GUEST_ASSERT_EQ(res.a1, ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_1);
	GUEST_ASSERT_EQ(res.a2, ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_2);
	GUEST_ASSERT_EQ(res.a3, ARM_SMCCC_VENDOR_HYP_UID_KVM_REG_3);

	smccc_hvc(ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID, 0, 0, 0, 0, 0, 0, 0, &res);
	GUEST_ASSERT(res.a0 & BIT(ARM_SMCCC_KVM_FUNC_FEATURES));
	GUEST_ASSERT(res.a3 & APF_FEATURES_W3_BIT);

	res = apf_hvc(KVM_ASYNC_PF_CALL_VERSION, 0, 0);
	GUEST_ASSERT_EQ(res.a0, SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(res.a1, KVM_ASYNC_PF_VERSION_1_0);

	res = apf_hvc(KVM_ASYNC_PF_CALL_SLOTS, 0, 0);
	GUEST_ASSERT_EQ(res.a0, SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(res.a1, APF_SLOTS);

	res = apf_hvc(KVM_ASYNC_PF_CALL_IRQ, 0, 0);
	GUEST_ASSERT_EQ(res.a0, SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(res.a1, KVM_ASYNC_PF_DEFAULT_IRQ);

	GUEST_DONE();
}

static void test_discovery(void)
{
	struct apf_vm t;
	uint64_t bmap;

	apf_vm_create(&t, guest_discovery);

	TEST_ASSERT(!__vcpu_has_device_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					    KVM_ARM_VCPU_ASYNC_PF_IRQ),
		    "KVM_ARM_VCPU_ASYNC_PF_IRQ not reported");
	TEST_ASSERT(!__vcpu_has_device_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					    KVM_ARM_VCPU_ASYNC_PF_BLOCK),
		    "KVM_ARM_VCPU_ASYNC_PF_BLOCK not reported");

	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	TEST_ASSERT(bmap & BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF),
		    "APF not offered in BMAP_2 (0x%lx)", bmap);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 2. Feature hidden by the VMM
 *
 * Asserted: with the APF bit cleared in KVM_REG_ARM_VENDOR_HYP_BMAP_2, the
 * guest's FEATURES call succeeds (its own bit is set in w0) but does not
 * report function 96; VERSION, SLOTS, IRQ, ENABLE (with a valid block),
 * DISABLE, ACK and an unknown subcall all return NOT_SUPPORTED; the BLOCK
 * attribute stays 0 and the block's 64 bytes stay zero, also after a
 * guest entry (no wake-all). After the first KVM_RUN, writing BMAP_2
 * fails with EBUSY and BMAP_2 still reads the hidden value. Subtests 16
 * and 17 run the same guest.
 * ---------------------------------------------------------------------
 */
static void guest_hidden(void)
{
	static const uint64_t subcalls[] = {
		KVM_ASYNC_PF_CALL_VERSION, KVM_ASYNC_PF_CALL_SLOTS,
		KVM_ASYNC_PF_CALL_IRQ, KVM_ASYNC_PF_CALL_ENABLE,
		KVM_ASYNC_PF_CALL_DISABLE, KVM_ASYNC_PF_CALL_ACK,
		APF_UNKNOWN_SUBCALL,
	};
	struct kvm_vcpu_pv_apf_data *blk = (void *)params.block_gpa[0];
	struct kvm_vcpu_pv_apf_data zero = {};
	struct arm_smccc_res res;
	unsigned int i;

	/* A FEATURES call that failed would have no bit 96 either. */
	smccc_hvc(ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID, 0, 0, 0, 0, 0, 0, 0, &res);
	GUEST_ASSERT(res.a0 != SMCCC_RET_NOT_SUPPORTED);
	GUEST_ASSERT(res.a0 & BIT(ARM_SMCCC_KVM_FUNC_FEATURES));
	GUEST_ASSERT(!(res.a3 & APF_FEATURES_W3_BIT));

	/* ENABLE gets valid arguments: being hidden is the only problem. */
	for (i = 0; i < ARRAY_SIZE(subcalls); i++)
		__GUEST_ASSERT(apf_call(subcalls[i], params.block_gpa[0],
					KVM_ASYNC_PF_ENABLED) == SMCCC_RET_NOT_SUPPORTED,
			       "Subcall %lu not refused", subcalls[i]);

	/* The exit is a guest entry: a wake-all would be written by now. */
	GUEST_CHECK_BLOCK(0);
	assert_block_unchanged(&zero, blk);
	GUEST_DONE();
}

static void test_hidden(void)
{
	uint64_t bmap, now;
	struct apf_vm t;
	int ret;

	apf_vm_create(&t, guest_hidden);

	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	bmap &= ~BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF);
	vcpu_set_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, bmap);

	run_to_done(t.vcpu);

	ret = __vcpu_set_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2,
			     bmap | BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF));
	TEST_ASSERT(ret && errno == EBUSY,
		    "BMAP_2 written after the first run (ret %d, errno %d)",
		    ret, errno);
	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &now);
	TEST_ASSERT_EQ(now, bmap);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 3. One page, released by the host once it has been requested
 *
 * Asserted: ENABLE's wake-all arrives on the PPI; the EL0 load of the
 * unserved page takes one PAGE_NOT_PRESENT at the load, with FAR the
 * page's address and a valid token (not 0, not ~0), and the background
 * fetch asks the pager for the page; once it is served, PAGE_READY carries
 * that token and the retried load reads the page's pattern without another
 * PAGE_NOT_PRESENT. Afterwards the block is free, the PPI is not pending
 * and the guest took exactly two PAGE_READYs (the wake-all and the
 * token's) and no PPI without one; the pager saw exactly one request.
 * ---------------------------------------------------------------------
 */
static void guest_single_page(void)
{
	guest_setup();
	guest_enable(0);
	guest_apf_round(0, true);
	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(2);
	GUEST_DONE();
}

static void test_single_page(void)
{
	struct apf_vm t;
	struct ucall uc;

	apf_vm_create(&t, guest_single_page);
	apf_vm_start_pager(&t);

	run_to_stage(t.vcpu, STAGE_NOT_PRESENT, &uc);

	/* The background fault-in asks the pager for the page... */
	pager_wait_requests(0, 1);

	/* ...which arrives now; PAGE_READY and the retry are checked by the guest. */
	pager_release(0, 1);
	run_to_done(t.vcpu);

	/*
	 * Only the background fault-in asked: neither the vCPU's first,
	 * non-blocking attempt nor its retry waited in userfaultfd.
	 */
	TEST_ASSERT_EQ(pager_state(0).nr_requests, 1);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 4. All slots in use, then one more fault
 *
 * Asserted: SLOTS returns 64; one EL0 run over pages 0-64 takes exactly 64
 * PAGE_NOT_PRESENTs, the i-th with FAR page i and a valid token that no
 * other one has, each load skipped (poison); the 65th load finds the queue
 * full and reads page 64's data synchronously. Before the pages are
 * served nothing is delivered (block free, PPI not pending). Once they
 * are, exactly 64 PAGE_READYs come, each with one of the 64 tokens and no
 * token twice, and nothing more; the retries read all 65 pages' data
 * without another PAGE_NOT_PRESENT; each of the 65 pages was requested
 * from the pager exactly once.
 * ---------------------------------------------------------------------
 */
static void guest_many_pages(void)
{
	bool matched[APF_SLOTS] = {};
	uint32_t np, ready, i, j, token;

	guest_setup();
	GUEST_ASSERT_EQ(apf_hvc(KVM_ASYNC_PF_CALL_SLOTS, 0, 0).a1, APF_SLOTS);
	guest_enable(0);

	np = READ_ONCE(ev.nr_not_present);
	ready = READ_ONCE(ev.nr_ready);

	/*
	 * One EL0 run touches pages 0..APF_SLOTS: each of the first APF_SLOTS
	 * accesses is skipped after its PAGE_NOT_PRESENT, the last one finds
	 * the queue full and is resolved synchronously.
	 */
	guest_el0_read(0, APF_SLOTS + 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + APF_SLOTS);

	for (i = 0; i < APF_SLOTS; i++) {
		token = ev.np_token[np + i];
		GUEST_ASSERT_EQ(ev.np_addr[np + i], test_page(i));
		GUEST_ASSERT_EQ(el0_val(i), EL0_POISON);
		__GUEST_ASSERT(token_valid(token), "Bad token 0x%x", token);
		for (j = 0; j < i; j++)
			__GUEST_ASSERT(ev.np_token[np + j] != token,
				       "Token 0x%x used twice", token);
	}
	GUEST_ASSERT_EQ(el0_val(APF_SLOTS), page_pattern(PG_FULL));
	/* Interrupts were masked so far: open a window to see the PPI. */
	guest_assert_quiet(ready);

	GUEST_SYNC1(STAGE_QUEUED);

	/* Every token comes back exactly once, in whatever order. */
	guest_wait_ready(ready + APF_SLOTS);
	for (i = 0; i < APF_SLOTS; i++) {
		token = ev.ready_token[ready + i];
		for (j = 0; j < APF_SLOTS; j++)
			if (ev.np_token[np + j] == token)
				break;
		__GUEST_ASSERT(j < APF_SLOTS, "PAGE_READY for unknown token 0x%x",
			       token);
		__GUEST_ASSERT(!matched[j], "Second PAGE_READY for token 0x%x",
			       token);
		matched[j] = true;
	}

	guest_el0_read(0, APF_SLOTS + 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + APF_SLOTS);
	for (i = 0; i <= APF_SLOTS; i++)
		GUEST_ASSERT_EQ(el0_val(i), page_pattern(i));
	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(ready + APF_SLOTS);

	GUEST_DONE();
}

static void test_many_pages(void)
{
	struct apf_vm t;
	struct ucall uc;
	uint32_t i;

	apf_vm_create(&t, guest_many_pages);
	apf_vm_start_pager(&t);

	/* The fault beyond the queue is synchronous: let it through. */
	pager_release(PG_FULL, 1);

	run_to_stage(t.vcpu, STAGE_QUEUED, &uc);
	TEST_ASSERT_EQ(pager_state(PG_FULL).nr_requests, 1);

	pager_release(0, APF_SLOTS);
	run_to_done(t.vcpu);

	/* One fetch per page, and no retry waited in userfaultfd */
	for (i = 0; i <= APF_SLOTS; i++)
		TEST_ASSERT(pager_state(i).nr_requests == 1,
			    "Page %u was requested %u times", i,
			    pager_state(i).nr_requests);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 5. Faults taken at EL1 are synchronous
 *
 * Asserted: an EL1 load from the unserved page (released up front) reads
 * its data with no abort at all (the guest has no handler for aborts taken
 * from EL1, so one would fail the run); the host wrote nothing into the
 * block (all 64 bytes as before the load), the registration is unchanged,
 * no PAGE_READY or PPI follows, and the pager saw exactly one request for
 * the page.
 * ---------------------------------------------------------------------
 */
static void guest_el1_access(void)
{
	struct kvm_vcpu_pv_apf_data copy;
	uint32_t ready;

	guest_setup();
	guest_enable(0);

	ready = READ_ONCE(ev.nr_ready);
	snapshot_block(&copy, apf_block);

	GUEST_ASSERT_EQ(READ_ONCE(*(uint64_t *)test_page(0)),
			page_pattern(0));

	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(ready);
	assert_block_unchanged(&copy, apf_block);

	GUEST_DONE();
}

static void test_el1_access(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_el1_access);
	apf_vm_start_pager(&t);

	pager_release(0, 1);
	run_to_done(t.vcpu);
	TEST_ASSERT_EQ(pager_state(0).nr_requests, 1);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 6. DISABLE with faults pending
 *
 * Asserted: pages 0-3 each take a PAGE_NOT_PRESENT (FAR page i, load
 * skipped); page 3's PAGE_READY, with page 3's token, lands in the block
 * while the fetches of pages 0-2 are blocked in userfaultfd. DISABLE
 * returns SUCCESS without waiting for them, and after the following ACK
 * the PPI is no longer pending and nothing is delivered. With APF off the
 * EL0 reads of pages 0-2 take no PAGE_NOT_PRESENT and wait for their data
 * (each page's second pager request, and no third). Once the old fetches
 * have ended (the host lets them settle), the BLOCK attribute is 0, no
 * PAGE_READY or PPI comes, and the block is byte for byte as it was after
 * DISABLE.
 * ---------------------------------------------------------------------
 */
static void guest_disable_pending(void)
{
	struct kvm_vcpu_pv_apf_data copy;
	uint32_t np, ready, token, i;

	guest_setup();
	guest_enable(0);

	np = READ_ONCE(ev.nr_not_present);
	ready = READ_ONCE(ev.nr_ready);

	/* Pages 0-2 stay with the host, page 3 was released up front. */
	guest_el0_read(0, 4);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 4);
	for (i = 0; i < 4; i++) {
		GUEST_ASSERT_EQ(ev.np_addr[np + i], test_page(i));
		GUEST_ASSERT_EQ(el0_val(i), EL0_POISON);
	}
	token = ev.np_token[np + 3];

	/*
	 * Take page 3's PAGE_READY out of the block by hand but do not ACK
	 * it: until the ACK the host may deliver nothing else, so pages 0-2
	 * are certain to be still pending when DISABLE comes.
	 */
	guest_wait_block_ready();
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->token), token);
	WRITE_ONCE(apf_block->reason, 0);

	GUEST_SYNC1(STAGE_PENDING);

	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	snapshot_block(&copy, apf_block);
	guest_assert_quiet(ready);

	/*
	 * With APF off the accesses are synchronous: they wait for the
	 * pages, which the pager serves on these second requests.
	 */
	guest_el0_read(0, 3);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 4);
	for (i = 0; i < 3; i++)
		GUEST_ASSERT_EQ(el0_val(i), page_pattern(i));

	/* The host gives the old fetches, served by now, time to end. */
	GUEST_SYNC1(STAGE_RUNNING);
	GUEST_CHECK_BLOCK(0);
	guest_assert_quiet(ready);
	GUEST_CHECK_BLOCK(0);
	guest_assert_quiet(ready);
	assert_block_unchanged(&copy, apf_block);

	GUEST_DONE();
}

static void test_disable_pending(void)
{
	struct apf_vm t;
	struct ucall uc;
	uint32_t i;

	apf_vm_create(&t, guest_disable_pending);
	apf_vm_start_pager(&t);

	pager_release(3, 1);
	/*
	 * Pages 0-2 arrive only when the guest reads them again after
	 * DISABLE: their second request. Their fetches are still blocked in
	 * userfaultfd at DISABLE, which must not wait for them, and they end
	 * after it, with no PAGE_READY.
	 */
	for (i = 0; i < 3; i++)
		pager_serve_at(i, 2);
	run_to_stage(t.vcpu, STAGE_PENDING, &uc);
	for (i = 0; i < 3; i++)
		pager_wait_requests(i, 1);

	run_to_stage(t.vcpu, STAGE_RUNNING, &uc);
	apf_settle();
	run_to_done(t.vcpu);
	for (i = 0; i < 3; i++)
		TEST_ASSERT_EQ(pager_state(i).nr_requests, 2);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 7. Every successful ENABLE queues exactly one wake-all
 *
 * Asserted: each of three ENABLEs (block 0; block 1, in another memslot,
 * without a DISABLE first; block 0 again after DISABLE) brings exactly one
 * PAGE_READY, with the wake-all token, in the block just registered, and
 * the BLOCK attribute names that block (0 after the DISABLE). The block
 * left behind is never written again: block 0 stays as it was while block
 * 1 is registered, and block 1 through the last ENABLE and a full APF round
 * on block 0. The round's PAGE_READY carries its own token, not a
 * wake-all: four PAGE_READYs in all, three of them wake-alls.
 * ---------------------------------------------------------------------
 */
static void guest_reenable(void)
{
	struct kvm_vcpu_pv_apf_data *blk0 = (void *)params.block_gpa[0];
	struct kvm_vcpu_pv_apf_data *blk1 = (void *)params.block_gpa[1];
	struct kvm_vcpu_pv_apf_data copy;

	guest_setup();

	guest_enable(0);
	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(1);

	/* Move to a block in another memslot without disabling first. */
	snapshot_block(&copy, blk0);
	guest_enable(1);
	GUEST_CHECK_BLOCK(params.block_gpa[1] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(2);
	assert_block_unchanged(&copy, blk0);

	/* Disable, then enable the first block again. */
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_CHECK_BLOCK(0);
	snapshot_block(&copy, blk1);
	guest_enable(0);
	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(3);

	/* The next PAGE_READY is a real one, and lands in the current block. */
	guest_apf_round(0, false);
	guest_assert_quiet(4);
	assert_block_unchanged(&copy, blk1);
	GUEST_ASSERT_EQ(ev.nr_wake_all, 3);

	GUEST_DONE();
}

static void test_reenable(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_reenable);
	apf_vm_start_pager(&t);

	pager_release(0, 1);
	run_to_done(t.vcpu);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 8. ACK with nothing pending
 *
 * Asserted: ACK returns SUCCESS with APF disabled, leaving the BLOCK
 * attribute 0, and twice in a row with APF enabled and nothing pending,
 * leaving the registration as it was, the block byte for byte unchanged,
 * no PPI pending and no PAGE_READY but ENABLE's wake-all. A full APF round
 * works afterwards, and no other event follows it.
 * ---------------------------------------------------------------------
 */
static void guest_ack_idle(void)
{
	struct kvm_vcpu_pv_apf_data copy;

	guest_setup();

	/* APF still disabled */
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_CHECK_BLOCK(0);

	guest_enable(0);
	snapshot_block(&copy, apf_block);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(1);
	assert_block_unchanged(&copy, apf_block);

	guest_apf_round(0, false);
	guest_assert_quiet(2);
	GUEST_DONE();
}

static void test_ack_idle(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_ack_idle);
	apf_vm_start_pager(&t);

	pager_release(0, 1);
	run_to_done(t.vcpu);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 9. Invalid calls change nothing
 *
 * Asserted: with block 0 registered, ENABLE returns INVALID_PARAMETER for a
 * misaligned IPA, an IPA in no memslot, a read-only memslot, a reserved
 * flag bit (bit 1, bit 63) and a block straddling two memslots, and an
 * unknown subcall (42, ACK + 1) returns NOT_SUPPORTED; after each call the
 * BLOCK attribute still names block 0. None of the failed ENABLEs queues a
 * wake-all (the block stays free, no PPI is pending and the guest took
 * only the first ENABLE's), and a full APF round on block 0 works
 * afterwards, followed by nothing else.
 * ---------------------------------------------------------------------
 */
static void guest_bad_input(void)
{
	uint64_t blk = params.block_gpa[0];
	const struct {
		uint64_t subcall, ipa, flags;
		long ret;
	} calls[] = {
		/* not 64-byte aligned */
		{ KVM_ASYNC_PF_CALL_ENABLE, blk + 8, KVM_ASYNC_PF_ENABLED,
		  SMCCC_RET_INVALID_PARAMETER },
		/* no memslot there */
		{ KVM_ASYNC_PF_CALL_ENABLE, NOSLOT_GPA, KVM_ASYNC_PF_ENABLED,
		  SMCCC_RET_INVALID_PARAMETER },
		/* read-only memslot */
		{ KVM_ASYNC_PF_CALL_ENABLE, RO_GPA, KVM_ASYNC_PF_ENABLED,
		  SMCCC_RET_INVALID_PARAMETER },
		/* reserved flag bits */
		{ KVM_ASYNC_PF_CALL_ENABLE, blk, KVM_ASYNC_PF_ENABLED | BIT(1),
		  SMCCC_RET_INVALID_PARAMETER },
		{ KVM_ASYNC_PF_CALL_ENABLE, blk, KVM_ASYNC_PF_ENABLED | BIT_ULL(63),
		  SMCCC_RET_INVALID_PARAMETER },
		/* unknown subcalls */
		{ APF_UNKNOWN_SUBCALL, 0, 0, SMCCC_RET_NOT_SUPPORTED },
		{ KVM_ASYNC_PF_CALL_ACK + 1, 0, 0, SMCCC_RET_NOT_SUPPORTED },
		/*
		 * Half in each of two adjacent memslots. Such a block is
		 * necessarily misaligned as well (an aligned one cannot
		 * cross a page), so this cannot tell the two checks apart.
		 */
		{ KVM_ASYNC_PF_CALL_ENABLE, params.straddle_gpa, KVM_ASYNC_PF_ENABLED,
		  SMCCC_RET_INVALID_PARAMETER },
	};
	unsigned int i;
	long ret;

	guest_setup();
	guest_enable(0);

	for (i = 0; i < ARRAY_SIZE(calls); i++) {
		ret = apf_call(calls[i].subcall, calls[i].ipa, calls[i].flags);
		__GUEST_ASSERT(ret == calls[i].ret,
			       "Subcall %lu (0x%lx, 0x%lx) returned %ld, expected %ld",
			       calls[i].subcall, calls[i].ipa, calls[i].flags,
			       ret, calls[i].ret);
		GUEST_CHECK_BLOCK(blk | KVM_ASYNC_PF_ENABLED);
	}

	/* No wake-all from the failed ENABLEs, and APF still works. */
	guest_assert_quiet(1);
	guest_apf_round(0, false);
	guest_assert_quiet(2);

	GUEST_DONE();
}

static void test_bad_input(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_bad_input);
	apf_vm_start_pager(&t);

	pager_release(0, 1);
	run_to_done(t.vcpu);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 10. Migration: the vCPU attributes
 *
 * Asserted, before the first run: an unknown attribute id gets ENXIO; IRQ
 * reads 18 and BLOCK 0 by default; IRQ refuses 15 and 32 with EINVAL and
 * takes 21; BLOCK refuses a misaligned IPA and a reserved flag bit with
 * EINVAL and an IPA in no memslot or in a read-only one with EFAULT, and
 * enabling with APF hidden in BMAP_2 with EINVAL, but takes 0 then; after
 * each refusal GET still returns the previous values, and each accepted
 * value reads back. In the guest, which never calls ENABLE: the IRQ
 * subcall returns 21, the restored block 0 gets exactly one wake-all, on
 * PPI 21, and block 1, registered and replaced before the run, is never
 * written (its wake-all is dropped); an APF round then works. After the
 * first run both attributes refuse SET with EBUSY and keep their values.
 * ---------------------------------------------------------------------
 */
#define MIGRATION_IRQ	21

static void guest_migration(void)
{
	struct kvm_vcpu_pv_apf_data *blk1 = (void *)params.block_gpa[1];
	struct kvm_vcpu_pv_apf_data zero = {};

	/* The VMM restored the registration: no ENABLE here. */
	apf_block = (void *)params.block_gpa[0];
	guest_setup();

	guest_wait_ready(1);
	GUEST_ASSERT_EQ(ev.ready_token[0], KVM_ASYNC_PF_WAKE_ALL_TOKEN);
	GUEST_SYNC1(STAGE_RUNNING);
	guest_assert_quiet(1);
	assert_block_unchanged(&zero, blk1);

	guest_apf_round(0, false);
	GUEST_DONE();
}

static int set_apf_attr(struct kvm_vcpu *vcpu, uint64_t attr, uint64_t val)
{
	uint32_t irq = val;

	if (attr == KVM_ARM_VCPU_ASYNC_PF_IRQ)
		return __vcpu_device_attr_set(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					      attr, &irq);
	return __vcpu_device_attr_set(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL, attr,
				      &val);
}

static void assert_apf_attr(struct kvm_vcpu *vcpu, uint64_t attr,
			    uint64_t val, int err)
{
	int ret = set_apf_attr(vcpu, attr, val);

	if (!err)
		TEST_ASSERT(!ret, "Setting attribute %lu to 0x%lx failed, errno %d",
			    attr, val, errno);
	else
		TEST_ASSERT(ret && errno == err,
			    "Setting attribute %lu to 0x%lx: ret %d errno %d, expected errno %d",
			    attr, val, ret, errno, err);
}

static void check_apf_attrs(struct kvm_vcpu *vcpu, uint32_t irq, uint64_t block)
{
	uint64_t block_now;
	uint32_t irq_now;

	vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
			     KVM_ARM_VCPU_ASYNC_PF_IRQ, &irq_now);
	vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
			     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block_now);
	TEST_ASSERT(irq_now == irq, "IRQ is %u, expected %u", irq_now, irq);
	TEST_ASSERT(block_now == block, "BLOCK is 0x%lx, expected 0x%lx",
		    block_now, block);
}

static void test_migration(void)
{
	struct kvm_vcpu *vcpu;
	uint64_t blk0, blk1, bmap;
	struct apf_vm t;
	struct ucall uc;

	apf_vm_create(&t, guest_migration);
	apf_vm_start_pager(&t);
	vcpu = t.vcpu;
	blk0 = params.block_gpa[0];
	blk1 = params.block_gpa[1];

	TEST_ASSERT(__vcpu_has_device_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL, 2) &&
		    errno == ENXIO, "Unknown APF attribute accepted");

	/* Defaults */
	check_apf_attrs(vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);

	/* IRQ: PPIs only */
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, 15, EINVAL);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, 32, EINVAL);
	check_apf_attrs(vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, MIGRATION_IRQ, 0);
	check_apf_attrs(vcpu, MIGRATION_IRQ, 0);

	/* BLOCK: validated like ENABLE */
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			(blk0 + 8) | KVM_ASYNC_PF_ENABLED, EINVAL);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			blk0 | KVM_ASYNC_PF_ENABLED | BIT(1), EINVAL);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			NOSLOT_GPA | KVM_ASYNC_PF_ENABLED, EFAULT);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			RO_GPA | KVM_ASYNC_PF_ENABLED, EFAULT);
	check_apf_attrs(vcpu, MIGRATION_IRQ, 0);

	/* No registration behind the back of a guest that cannot see APF */
	vcpu_get_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	vcpu_set_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2,
		     bmap & ~BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF));
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			blk0 | KVM_ASYNC_PF_ENABLED, EINVAL);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK, 0, 0);
	check_apf_attrs(vcpu, MIGRATION_IRQ, 0);
	vcpu_set_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, bmap);

	/* Round trips, ending with blk0 registered (blk1's wake-all is dropped) */
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			blk1 | KVM_ASYNC_PF_ENABLED, 0);
	check_apf_attrs(vcpu, MIGRATION_IRQ, blk1 | KVM_ASYNC_PF_ENABLED);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK, 0, 0);
	check_apf_attrs(vcpu, MIGRATION_IRQ, 0);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			blk0 | KVM_ASYNC_PF_ENABLED, 0);
	check_apf_attrs(vcpu, MIGRATION_IRQ, blk0 | KVM_ASYNC_PF_ENABLED);

	params.expected_irq = MIGRATION_IRQ;
	sync_global_to_guest(t.vm, params);
	pager_release(0, 1);

	/* The guest gets the wake-all on the new PPI, in the restored block. */
	run_to_stage(vcpu, STAGE_RUNNING, &uc);

	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, MIGRATION_IRQ, EBUSY);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			blk0 | KVM_ASYNC_PF_ENABLED, EBUSY);
	check_apf_attrs(vcpu, MIGRATION_IRQ, blk0 | KVM_ASYNC_PF_ENABLED);

	run_to_done(vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 11. Statistics
 *
 * Asserted: over a window that starts after ENABLE's wake-all, each apf_*
 * counter of the vCPU goes up by exactly what the guest saw or did:
 * apf_not_present and apf_ready by the PAGE_NOT_PRESENTs and PAGE_READYs
 * it took (66 each), apf_ready_mapped as apf_ready (each page was mapped
 * before its PAGE_READY), apf_sync_not_el0 by one (an EL1 access),
 * apf_sync_busy by one (an EL0 access while PG_HOLD's PAGE_READY sits
 * un-ACKed in the block), apf_sync_repeat by one (a second access to a
 * pending page), apf_sync_queue_full by one (the 65th outstanding fault),
 * apf_sync_disabled by one (an access after DISABLE) and apf_sync_refault
 * not at all. Along the way the guest checks that each of those accesses
 * reads its page's data without a PAGE_NOT_PRESENT, and that PAGE_READY
 * tokens match.
 * ---------------------------------------------------------------------
 */
static void guest_stats(void)
{
	uint32_t np, ready, token;

	guest_setup();
	GUEST_ASSERT_EQ(apf_hvc(KVM_ASYNC_PF_CALL_SLOTS, 0, 0).a1, APF_SLOTS);
	guest_enable(0);

	/* The window starts after ENABLE's wake-all. */
	np = READ_ONCE(ev.nr_not_present);
	ready = READ_ONCE(ev.nr_ready);
	GUEST_SYNC1(STAGE_STATS_BASE);

	/* Taken at EL1 */
	GUEST_ASSERT_EQ(READ_ONCE(*(uint64_t *)test_page(PG_EL1)),
			page_pattern(PG_EL1));
	exp_stats.val[APF_STAT_SYNC_NOT_EL0]++;

	/* Block busy: PG_HOLD's PAGE_READY sits in it, not yet ACKed. */
	guest_el0_read(PG_HOLD, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
	token = ev.np_token[np];
	guest_wait_block_ready();
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->token), token);

	guest_el0_read(PG_BUSY, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(PG_BUSY));
	exp_stats.val[APF_STAT_SYNC_BUSY]++;

	guest_wait_ready(ready + 1);
	GUEST_ASSERT_EQ(ev.ready_token[ready], token);

	/* Repeat: the second access to a pending page waits for it. */
	guest_el0_read(PG_REPEAT, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 2);
	token = ev.np_token[np + 1];
	guest_el0_read(PG_REPEAT, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 2);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(PG_REPEAT));
	exp_stats.val[APF_STAT_SYNC_REPEAT]++;

	guest_wait_ready(ready + 2);
	GUEST_ASSERT_EQ(ev.ready_token[ready + 1], token);

	/* Queue full */
	guest_el0_read(0, APF_SLOTS + 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 2 + APF_SLOTS);
	GUEST_ASSERT_EQ(el0_val(APF_SLOTS), page_pattern(PG_FULL));
	exp_stats.val[APF_STAT_SYNC_QUEUE_FULL]++;

	GUEST_SYNC1(STAGE_QUEUED);
	guest_wait_ready(ready + 2 + APF_SLOTS);

	/* Disabled */
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
	guest_el0_read(PG_DISABLED, 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(PG_DISABLED));
	exp_stats.val[APF_STAT_SYNC_DISABLED]++;

	exp_stats.val[APF_STAT_NOT_PRESENT] = READ_ONCE(ev.nr_not_present) - np;
	exp_stats.val[APF_STAT_READY] = READ_ONCE(ev.nr_ready) - ready;
	/* Every page stays in once served: each is mapped before PAGE_READY */
	exp_stats.val[APF_STAT_READY_MAPPED] = exp_stats.val[APF_STAT_READY];
	GUEST_SYNC1(STAGE_STATS_END);

	GUEST_DONE();
}

static void test_stats(void)
{
	uint64_t base[NR_APF_STATS], now[NR_APF_STATS];
	struct apf_vm t;
	struct ucall uc;
	int i;

	apf_vm_create(&t, guest_stats);
	apf_vm_start_pager(&t);

	/* Everything but the queue-filling pages may come in at once. */
	pager_release(PG_FULL, 1);
	pager_release(PG_HOLD, 1);
	pager_release(PG_BUSY, 1);
	pager_release(PG_EL1, 1);
	pager_release(PG_DISABLED, 1);
	/* Requested by the background fault-in and by the repeated access */
	pager_serve_at(PG_REPEAT, 2);

	run_to_stage(t.vcpu, STAGE_STATS_BASE, &uc);
	read_apf_stats(t.vcpu, base);

	run_to_stage(t.vcpu, STAGE_QUEUED, &uc);
	pager_release(0, APF_SLOTS);

	run_to_stage(t.vcpu, STAGE_STATS_END, &uc);
	read_apf_stats(t.vcpu, now);
	sync_global_from_guest(t.vm, exp_stats);

	for (i = 0; i < NR_APF_STATS; i++)
		TEST_ASSERT(now[i] - base[i] == exp_stats.val[i],
			    "%s went up by %lu, the guest counted %lu",
			    apf_stat_names[i], now[i] - base[i],
			    exp_stats.val[i]);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * fuzz: random hypercalls on two vCPUs while faults are in flight
 * ---------------------------------------------------------------------
 *
 * vCPUs 0 and 1 issue random APF hypercalls at the same time: random
 * subcalls (unknown ones and ones with garbage above w1 included), random
 * x2..x7, blocks at and across the edges of the memslots below, unaligned,
 * in no memslot or in a read-only one, and random flags. Meanwhile vCPU 2
 * has FUZZ_NR_STALLED faults whose fetches wait in userfaultfd: half of
 * them arrive while the others fuzz, the rest afterwards.
 *
 * Each fuzzing vCPU checks every result against the ABI and keeps a model
 * of its registration, which the host compares with the BLOCK attribute
 * now and then. Like a guest, a fuzzer zeroes a block before it registers
 * it (not always), so the host really writes wake-alls to the blocks at
 * the edges. The host may only ever write the reason and token of such a
 * block: every other byte of the memslots keeps the canary pattern that
 * the host wrote at the start. In the end each fuzzer does a well-formed
 * ENABLE and one real APF round trip, in turn.
 *
 *   FUZZ_GPA - stride        no memslot
 *   FUZZ_GPA                 FUZZ_SLOT_A, 2 pages      blocks can go here
 *   FUZZ_GPA + 2 * stride    FUZZ_SLOT_B, 2 pages      and here
 *   FUZZ_GPA + 4 * stride    FUZZ_SLOT_RO, 1 page, read-only
 *   FUZZ_GPA + 5 * stride    no memslot
 *
 * The inputs come from a seeded PRNG; ASYNC_PF_SEED in the environment
 * replays a run.
 *
 * Asserted: every fuzzed call returns in x0 what fuzz_expected() derives
 * from apf.rst, and x1 of a successful VERSION, SLOTS or IRQ is 0x00010000,
 * 64 or the PPI; the BLOCK attribute equals the fuzzer's model of its
 * registration every FUZZ_CHECK_EVERY calls and at the end; each fuzzer
 * found a wake-all written by the host in a block it had just registered,
 * and at the end some blocks in the fuzzed memslots hold one; every byte
 * of those memslots (and of the real blocks' pages) outside the reason and
 * token of a block the guest zeroed still holds its canary, and those
 * fields hold only 0/2 and 0/~0. Meanwhile the staller's 16 fetches each
 * made exactly one uffd request, its 16 tokens each come back exactly
 * once and its retries read the pages' data; apf_not_present is 16 and
 * apf_ready 17 (the wake-all included) on the staller, apf_not_present 1
 * on each fuzzer, whose final well-formed ENABLE and APF round work.
 */
#define FUZZ_SLOT_A		5
#define FUZZ_SLOT_B		6
#define FUZZ_SLOT_RO		7
#define FUZZ_GPA		0xb0000000ULL
#define FUZZ_RW_PAGES		4		/* A and B */
#define FUZZ_MAX_STRIDE		0x10000		/* 64K pages */
#define FUZZ_MAX_BLOCKS		(FUZZ_RW_PAGES * FUZZ_MAX_STRIDE / 64)

#define FUZZ_NR_FUZZERS		2		/* vCPUs 0 and 1 */
#define FUZZ_STALLER		2		/* vCPU 2 */
#define FUZZ_NR_STALLED		16		/* test pages 0-15 */
#define FUZZ_PG_FINAL		FUZZ_NR_STALLED	/* + vCPU: the last round */

#define FUZZ_CALLS		200000		/* per fuzzing vCPU */
#define FUZZ_CHECK_EVERY	1024
#define FUZZ_MAX_BAD		4		/* calls kept of each kind */
#define FUZZ_SEED_ENV		"ASYNC_PF_SEED"
#define FUZZ_NR_CANARY		6

enum {
	STAGE_FUZZ_HALF = 2000,
	STAGE_FUZZ_DONE,	/* arg: number of calls */
};

/* Set by the host */
static struct {
	uint64_t seed;
	uint64_t nr_calls;
} fuzz_cfg;

/* A call whose result the ABI does not allow */
struct fuzz_bad {
	uint64_t n;		/* its number */
	uint64_t x[4];		/* x0..x3 */
	uint64_t a0, a1;
	long expected;
};

static struct fuzz_result {
	uint64_t calls;
	uint64_t ret[3];	/* SUCCESS, NOT_SUPPORTED, INVALID_PARAMETER */
	uint64_t registered;	/* ENABLEs that registered a block */
	uint64_t wake_all;	/* ...and found a wake-all in it right away */
	uint64_t nr_bad[2];	/* garbage above a known subcall, others */
	struct fuzz_bad bad[2][FUZZ_MAX_BAD];
} fuzz_res[FUZZ_NR_FUZZERS];

/* The blocks of A and B that a fuzzer zeroed: the host may write there. */
static uint8_t fuzz_touched[FUZZ_MAX_BLOCKS];

static uint64_t fuzz_rand_init(uint64_t seed, uint32_t cpu)
{
	uint64_t z = seed + (cpu + 1) * 0x9e3779b97f4a7c15ULL;	/* splitmix64 */

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	z ^= z >> 31;
	return z ? z : 1;
}

/* xorshift64* */
static uint64_t fuzz_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dULL;
}

static uint64_t fuzz_pick(uint64_t *s, uint64_t n)
{
	return fuzz_rand(s) % n;
}

/* Whether an aligned block at @ipa is inside a writable memslot */
static bool fuzz_block_ok(uint64_t ipa)
{
	return ipa >= FUZZ_GPA && ipa < FUZZ_GPA + FUZZ_RW_PAGES * params.stride;
}

/*
 * A block IPA. Never one in the memslots of the guest's code, test pages
 * or real blocks: random ones are 0 or above 4 GiB.
 */
static uint64_t fuzz_ipa(uint64_t *s)
{
	uint64_t stride = params.stride;
	const uint64_t edges[] = {
		FUZZ_GPA, FUZZ_GPA + 2 * stride, FUZZ_GPA + 4 * stride,
		FUZZ_GPA + 5 * stride, RO_GPA, RO_GPA + stride, NOSLOT_GPA,
	};
	static const int64_t near[] = {
		-128, -64, -63, -32, -8, -1, 0, 1, 8, 32, 56, 63, 64, 128,
	};
	uint64_t edge = edges[fuzz_pick(s, ARRAY_SIZE(edges))];
	uint64_t x;

	switch (fuzz_pick(s, 8)) {
	case 0 ... 2:
		return FUZZ_GPA + fuzz_pick(s, FUZZ_RW_PAGES * stride / 64) * 64;
	case 3 ... 4:
		return edge + near[fuzz_pick(s, ARRAY_SIZE(near))];
	case 5:
		return edge + fuzz_pick(s, 512) - 256;
	case 6:
		/* From the gap before A to the one after the read-only slot */
		return FUZZ_GPA - stride + fuzz_pick(s, 7 * stride);
	default:
		x = fuzz_rand(s);
		if (!(x & 0xf0))
			return 0;
		if (x & 0x100)
			x &= ~(uint64_t)(KVM_ASYNC_PF_BLOCK_ALIGN - 1);
		return x | BIT_ULL(32 + fuzz_pick(s, 32));
	}
}

static uint64_t fuzz_flags(uint64_t *s)
{
	switch (fuzz_pick(s, 8)) {
	case 0:
		return 0;
	case 1:
		return KVM_ASYNC_PF_ENABLED | BIT_ULL(1 + fuzz_pick(s, 63));
	case 2:
		return fuzz_rand(s);
	default:
		return KVM_ASYNC_PF_ENABLED;
	}
}

static uint64_t fuzz_subcall(uint64_t *s)
{
	switch (fuzz_pick(s, 16)) {
	case 0 ... 5:
		return KVM_ASYNC_PF_CALL_ENABLE;
	case 6 ... 7:
		return KVM_ASYNC_PF_CALL_DISABLE;
	case 8 ... 9:
		return KVM_ASYNC_PF_CALL_ACK;
	case 10:
		return fuzz_pick(s, KVM_ASYNC_PF_CALL_IRQ + 1);
	case 11:
		return KVM_ASYNC_PF_CALL_ACK + 1 + fuzz_pick(s, 256);
	case 12:
		return (uint32_t)fuzz_rand(s);
	case 13:
		return fuzz_rand(s);
	default:
		/* A known subcall in w1, garbage above it */
		return (fuzz_rand(s) | 1) << 32 |
		       fuzz_pick(s, KVM_ASYNC_PF_CALL_ACK + 1);
	}
}

/* What apf.rst says the call returns in x0 */
static long fuzz_expected(uint64_t subcall, uint64_t ipa, uint64_t flags)
{
	switch (subcall) {
	case KVM_ASYNC_PF_CALL_VERSION:
	case KVM_ASYNC_PF_CALL_SLOTS:
	case KVM_ASYNC_PF_CALL_IRQ:
	case KVM_ASYNC_PF_CALL_DISABLE:
	case KVM_ASYNC_PF_CALL_ACK:
		return SMCCC_RET_SUCCESS;
	case KVM_ASYNC_PF_CALL_ENABLE:
		if (flags & ~(uint64_t)KVM_ASYNC_PF_ENABLED)
			return SMCCC_RET_INVALID_PARAMETER;
		if (!ipa || !(flags & KVM_ASYNC_PF_ENABLED))
			return SMCCC_RET_SUCCESS;	/* a DISABLE */
		if (ipa % KVM_ASYNC_PF_BLOCK_ALIGN || !fuzz_block_ok(ipa))
			return SMCCC_RET_INVALID_PARAMETER;
		return SMCCC_RET_SUCCESS;
	default:
		return SMCCC_RET_NOT_SUPPORTED;
	}
}

/* x1 of a successful VERSION, SLOTS or IRQ */
static bool fuzz_a1_ok(uint64_t subcall, uint64_t a1)
{
	switch (subcall) {
	case KVM_ASYNC_PF_CALL_VERSION:
		return a1 == KVM_ASYNC_PF_VERSION_1_0;
	case KVM_ASYNC_PF_CALL_SLOTS:
		return a1 == APF_SLOTS;
	case KVM_ASYNC_PF_CALL_IRQ:
		return a1 == params.expected_irq;
	default:
		return true;
	}
}

/*
 * Zero the reason and token of a block, as a guest does before ENABLE.
 * Every fourth block, none at a memslot edge, keeps its canary for good:
 * registered there, a block is never free, so the host must not write it.
 */
static void fuzz_touch(uint64_t ipa)
{
	uint64_t idx = (ipa - FUZZ_GPA) / KVM_ASYNC_PF_BLOCK_ALIGN;

	if (ipa % KVM_ASYNC_PF_BLOCK_ALIGN || !fuzz_block_ok(ipa) ||
	    idx % 4 == 2)
		return;
	WRITE_ONCE(fuzz_touched[idx], 1);
	WRITE_ONCE(*(uint64_t *)ipa, 0);
}

static int fuzz_ret_idx(long ret)
{
	switch (ret) {
	case SMCCC_RET_SUCCESS:
		return 0;
	case SMCCC_RET_NOT_SUPPORTED:
		return 1;
	default:
		return 2;
	}
}

static void fuzz_record_bad(struct fuzz_result *res, uint64_t n,
			    const uint64_t *x, struct arm_smccc_res *r,
			    long exp)
{
	int k = !(x[1] >> 32 && (uint32_t)x[1] <= KVM_ASYNC_PF_CALL_ACK);
	struct fuzz_bad *bad;

	if (res->nr_bad[k]++ >= FUZZ_MAX_BAD)
		return;
	bad = &res->bad[k][res->nr_bad[k] - 1];
	bad->n = n;
	memcpy(bad->x, x, sizeof(bad->x));
	bad->a0 = r->a0;
	bad->a1 = r->a1;
	bad->expected = exp;
}

/* The registration after a call that returned what the ABI says */
static uint64_t fuzz_next_model(struct fuzz_result *res, uint64_t model,
				const uint64_t *x, long exp)
{
	struct kvm_vcpu_pv_apf_data *blk = (void *)x[2];

	if (x[1] == KVM_ASYNC_PF_CALL_DISABLE)
		return 0;
	if (x[1] != KVM_ASYNC_PF_CALL_ENABLE || exp != SMCCC_RET_SUCCESS)
		return model;
	if (!x[2] || !(x[3] & KVM_ASYNC_PF_ENABLED))
		return 0;

	res->registered++;
	if (READ_ONCE(blk->reason) == KVM_PV_REASON_PAGE_READY)
		res->wake_all++;
	return x[2] | KVM_ASYNC_PF_ENABLED;
}

static void guest_fuzz_calls(uint32_t cpu)
{
	struct fuzz_result *res = &fuzz_res[cpu];
	uint64_t s = fuzz_rand_init(fuzz_cfg.seed, cpu);
	struct kvm_vcpu_pv_apf_data *blk;
	uint64_t model = 0, x[8], n;
	struct arm_smccc_res r;
	long exp;
	int i;

	GUEST_SYNC1(STAGE_RUNNING);

	for (n = 0; n < fuzz_cfg.nr_calls; n++) {
		x[0] = ARM_SMCCC_VENDOR_HYP_KVM_ASYNC_PF_FUNC_ID;
		x[1] = fuzz_subcall(&s);
		x[2] = fuzz_ipa(&s);
		x[3] = fuzz_flags(&s);
		for (i = 4; i < 8; i++)
			x[i] = fuzz_pick(&s, 2) ? fuzz_rand(&s) : 0;

		if ((uint32_t)x[1] == KVM_ASYNC_PF_CALL_ENABLE && fuzz_pick(&s, 2))
			fuzz_touch(x[2]);
		/* Consume a PAGE_READY in the block, as a guest does before ACK */
		blk = (void *)(model & ~(uint64_t)KVM_ASYNC_PF_ENABLED);
		if ((uint32_t)x[1] == KVM_ASYNC_PF_CALL_ACK && blk &&
		    READ_ONCE(blk->reason) == KVM_PV_REASON_PAGE_READY)
			WRITE_ONCE(blk->reason, 0);

		smccc_hvc(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], &r);

		exp = fuzz_expected(x[1], x[2], x[3]);
		res->ret[fuzz_ret_idx(r.a0)]++;
		if ((long)r.a0 == exp &&
		    (exp != SMCCC_RET_SUCCESS || fuzz_a1_ok(x[1], r.a1))) {
			model = fuzz_next_model(res, model, x, exp);
		} else {
			fuzz_record_bad(res, n, x, &r, exp);
			/* Who knows what the call did: start over. */
			GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0),
					SMCCC_RET_SUCCESS);
			model = 0;
		}

		if (n % FUZZ_CHECK_EVERY == FUZZ_CHECK_EVERY - 1)
			GUEST_CHECK_BLOCK(model);
		if (n == fuzz_cfg.nr_calls / 2)
			GUEST_SYNC1(STAGE_FUZZ_HALF);
	}
	res->calls = n;
	GUEST_CHECK_BLOCK(model);
	GUEST_SYNC2(STAGE_FUZZ_DONE, n);

	/* Still in working order, once it is this vCPU's turn */
	guest_enable(cpu);
	guest_apf_round(FUZZ_PG_FINAL + cpu, false);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
}

static void guest_fuzz_stall(void)
{
	uint32_t np, ready, seen = 0, i, j;

	kvm_static_assert(FUZZ_NR_STALLED <= 32);
	guest_enable(0);
	np = READ_ONCE(ev.nr_not_present);
	ready = READ_ONCE(ev.nr_ready);

	guest_el0_read(0, FUZZ_NR_STALLED);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + FUZZ_NR_STALLED);
	GUEST_SYNC1(STAGE_PENDING);

	/* Every token comes back once, while and after the others fuzz. */
	guest_wait_ready(ready + FUZZ_NR_STALLED);
	for (i = 0; i < FUZZ_NR_STALLED; i++) {
		for (j = 0; j < FUZZ_NR_STALLED; j++)
			if (ev.np_token[np + j] == ev.ready_token[ready + i])
				break;
		__GUEST_ASSERT(j < FUZZ_NR_STALLED && !(seen & BIT(j)),
			       "Unexpected PAGE_READY, token 0x%x",
			       ev.ready_token[ready + i]);
		seen |= BIT(j);
	}

	guest_el0_read(0, FUZZ_NR_STALLED);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + FUZZ_NR_STALLED);
	for (i = 0; i < FUZZ_NR_STALLED; i++)
		GUEST_ASSERT_EQ(el0_val(i), page_pattern(i));
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
}

/*
 * The vCPUs share ev and the EL0 machinery, so they take turns with them:
 * the staller first, then fuzzer 0 and fuzzer 1 for their last round.
 */
static void guest_fuzz(void)
{
	uint32_t cpu = guest_get_vcpuid();

	guest_setup();
	if (cpu == FUZZ_STALLER)
		guest_fuzz_stall();
	else
		guest_fuzz_calls(cpu);
	GUEST_DONE();
}

static struct {
	struct apf_vm *t;
	pthread_barrier_t start;	/* the staller's fetches wait in uffd */
	pthread_barrier_t fuzzed;	/* both fuzzers are done */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned int turn;		/* staller, fuzzer 0, fuzzer 1 */
} fuzz_host = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
};

static void fuzz_wait_turn(unsigned int turn)
{
	pthread_mutex_lock(&fuzz_host.lock);
	while (fuzz_host.turn != turn)
		pthread_cond_wait(&fuzz_host.cond, &fuzz_host.lock);
	pthread_mutex_unlock(&fuzz_host.lock);
}

static void fuzz_end_turn(void)
{
	pthread_mutex_lock(&fuzz_host.lock);
	fuzz_host.turn++;
	pthread_cond_broadcast(&fuzz_host.cond);
	pthread_mutex_unlock(&fuzz_host.lock);
}

static void *fuzz_staller_thread(void *arg)
{
	struct kvm_vcpu *vcpu = fuzz_host.t->vcpus[FUZZ_STALLER];
	struct ucall uc;
	uint32_t i;

	run_to_stage(vcpu, STAGE_PENDING, &uc);
	/* Only the background fetch asked, and it is stalled. */
	for (i = 0; i < FUZZ_NR_STALLED; i++) {
		pager_wait_requests(i, 1);
		TEST_ASSERT_EQ(pager_state(i).nr_requests, 1);
	}
	pthread_barrier_wait(&fuzz_host.start);

	run_to_done(vcpu);
	fuzz_end_turn();
	return NULL;
}

static void *fuzz_fuzzer_thread(void *arg)
{
	unsigned int idx = (uintptr_t)arg;
	struct kvm_vcpu *vcpu = fuzz_host.t->vcpus[idx];
	uint64_t stage, block;
	struct ucall uc;

	run_to_stage(vcpu, STAGE_RUNNING, &uc);
	pthread_barrier_wait(&fuzz_host.start);

	while ((stage = run_vcpu(vcpu, &uc)) != STAGE_FUZZ_DONE) {
		if (stage == STAGE_CHECK_BLOCK) {
			vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block);
			TEST_ASSERT(block == uc.args[1],
				    "vCPU %u: BLOCK is 0x%lx, the guest expects 0x%lx",
				    idx, block, uc.args[1]);
			continue;
		}
		TEST_ASSERT(stage == STAGE_FUZZ_HALF, "Unexpected stage %lu", stage);
		/* Each fuzzer lets a quarter of the stalled pages in. */
		pager_release(idx * FUZZ_NR_STALLED / 4, FUZZ_NR_STALLED / 4);
	}

	pthread_barrier_wait(&fuzz_host.fuzzed);
	pager_release(0, FUZZ_NR_STALLED);

	fuzz_wait_turn(1 + idx);
	pager_release(FUZZ_PG_FINAL + idx, 1);
	run_to_done(vcpu);
	fuzz_end_turn();
	return NULL;
}

/* Never 0, 1 or 2 in a byte, so never a valid reason in a block */
static uint8_t fuzz_canary(uint64_t gpa)
{
	return 0x80 | ((gpa ^ (gpa >> 7) ^ (gpa >> 13)) & 0x7f);
}

static void fuzz_canary_fill(struct kvm_vm *vm, uint64_t gpa, uint64_t len)
{
	uint8_t *hva = addr_gpa2hva(vm, gpa);
	uint64_t i;

	for (i = 0; i < len; i++)
		hva[i] = fuzz_canary(gpa + i);
}

/*
 * Returns how many bytes the host changed where it must not, and prints
 * the first few. In blocks a fuzzer zeroed, the host may have written a
 * wake-all (token ~0, then reason 2) and the fuzzer may have zeroed it
 * again, possibly between the two writes.
 */
static uint64_t fuzz_canary_check(struct kvm_vm *vm, uint64_t gpa,
				  uint64_t len, uint64_t *nr_written)
{
	uint8_t *hva = addr_gpa2hva(vm, gpa);
	uint64_t i, g, nr_bad = 0;
	uint32_t reason, token;

	for (i = 0; i < len; i++) {
		g = gpa + i;
		if (fuzz_block_ok(g) && g % KVM_ASYNC_PF_BLOCK_ALIGN < 8 &&
		    fuzz_touched[(g - FUZZ_GPA) / KVM_ASYNC_PF_BLOCK_ALIGN]) {
			if (g % KVM_ASYNC_PF_BLOCK_ALIGN)
				continue;
			memcpy(&reason, hva + i, 4);
			memcpy(&token, hva + i + 4, 4);
			*nr_written += reason == KVM_PV_REASON_PAGE_READY;
			if ((reason == 0 || reason == KVM_PV_REASON_PAGE_READY) &&
			    (token == 0 || token == KVM_ASYNC_PF_WAKE_ALL_TOKEN))
				continue;
			if (nr_bad++ < FUZZ_MAX_BAD)
				ksft_print_msg("fuzz: block at 0x%lx: reason %u token 0x%x\n",
					       g, reason, token);
			continue;
		}
		if (hva[i] == fuzz_canary(g))
			continue;
		if (nr_bad++ < FUZZ_MAX_BAD)
			ksft_print_msg("fuzz: guest byte at 0x%lx is 0x%02x, was 0x%02x\n",
				       g, hva[i], fuzz_canary(g));
	}
	return nr_bad;
}

static void fuzz_print_bad(unsigned int idx, struct fuzz_bad *bad)
{
	ksft_print_msg("fuzz: vCPU %u #%lu: x1 %#lx x2 %#lx x3 %#lx -> x0 %ld x1 %#lx, want %ld\n",
		       idx, bad->n, bad->x[1], bad->x[2], bad->x[3],
		       (long)bad->a0, bad->a1, bad->expected);
}

/* Prints what a fuzzing vCPU did; returns how many results were wrong. */
static uint64_t fuzz_report(unsigned int idx, uint64_t *stats)
{
	struct fuzz_result *res = &fuzz_res[idx];
	uint64_t j, k;

	ksft_print_msg("fuzz: vCPU %u: %lu calls: SUCCESS %lu, NOT_SUPPORTED %lu, INVALID %lu\n",
		       idx, res->calls, res->ret[0], res->ret[1], res->ret[2]);
	ksft_print_msg("fuzz: vCPU %u: %lu registrations, %lu wake-alls at once, apf_ready %lu\n",
		       idx, res->registered, res->wake_all,
		       stats[APF_STAT_READY]);
	if (!res->nr_bad[0] && !res->nr_bad[1])
		return 0;

	ksft_print_msg("fuzz: vCPU %u: %lu results against the ABI, %lu of them with x1 > ~0U\n",
		       idx, res->nr_bad[0] + res->nr_bad[1], res->nr_bad[0]);
	for (k = 0; k < 2; k++)
		for (j = 0; j < min_t(uint64_t, res->nr_bad[k], FUZZ_MAX_BAD); j++)
			fuzz_print_bad(idx, &res->bad[k][j]);
	return res->nr_bad[0] + res->nr_bad[1];
}

static void test_fuzz(void)
{
	pthread_t threads[FUZZ_NR_FUZZERS + 1];
	uint64_t stride, npages, seed, nr_bad = 0, nr_written = 0, nr_wrong = 0;
	uint64_t stats[NR_APF_STATS];
	struct timespec start, took;
	const char *env;
	struct apf_vm t;
	unsigned int i, j;
	struct {
		uint64_t gpa, len;
	} canary[FUZZ_NR_CANARY];

	__apf_vm_create(&t, guest_fuzz, FUZZ_NR_FUZZERS + 1, true);
	stride = params.stride;
	npages = stride / t.vm->page_size;
	TEST_ASSERT(stride <= FUZZ_MAX_STRIDE, "Pages larger than 64K");

	vm_userspace_mem_region_add(t.vm, VM_MEM_SRC_ANONYMOUS, FUZZ_GPA,
				    FUZZ_SLOT_A, 2 * npages, 0);
	vm_userspace_mem_region_add(t.vm, VM_MEM_SRC_ANONYMOUS,
				    FUZZ_GPA + 2 * stride, FUZZ_SLOT_B,
				    2 * npages, 0);
	vm_userspace_mem_region_add(t.vm, VM_MEM_SRC_ANONYMOUS,
				    FUZZ_GPA + 4 * stride, FUZZ_SLOT_RO, npages,
				    KVM_MEM_READONLY);
	virt_map(t.vm, FUZZ_GPA, FUZZ_GPA, FUZZ_RW_PAGES * npages);

	/*
	 * The memslots the fuzzers aim at, one by one (their host mappings
	 * are not contiguous), and the rest of the pages of the real blocks.
	 */
	for (i = 0; i < 3; i++) {
		canary[i].gpa = FUZZ_GPA + 2 * i * stride;
		canary[i].len = (i < 2 ? 2 : 1) * stride;
	}
	canary[3].gpa = RO_GPA;
	canary[3].len = stride;
	for (i = 0; i < 2; i++) {
		canary[4 + i].gpa = params.block_gpa[i] + KVM_ASYNC_PF_BLOCK_ALIGN;
		canary[4 + i].len = stride - KVM_ASYNC_PF_BLOCK_ALIGN;
	}
	for (i = 0; i < FUZZ_NR_CANARY; i++)
		fuzz_canary_fill(t.vm, canary[i].gpa, canary[i].len);

	env = getenv(FUZZ_SEED_ENV);
	if (env) {
		seed = strtoull(env, NULL, 0);
	} else {
		clock_gettime(CLOCK_REALTIME, &start);
		seed = fuzz_rand_init(start.tv_sec ^ start.tv_nsec, getpid());
	}
	ksft_print_msg("fuzz: seed 0x%lx (%s=0x%lx repeats it)\n", seed,
		       FUZZ_SEED_ENV, seed);
	fuzz_cfg.seed = seed;
	fuzz_cfg.nr_calls = FUZZ_CALLS;
	sync_global_to_guest(t.vm, fuzz_cfg);

	apf_vm_start_pager(&t);

	fuzz_host.t = &t;
	pthread_barrier_init(&fuzz_host.start, NULL, FUZZ_NR_FUZZERS + 1);
	pthread_barrier_init(&fuzz_host.fuzzed, NULL, FUZZ_NR_FUZZERS);
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (i = 0; i < FUZZ_NR_FUZZERS; i++)
		pthread_create(&threads[i], NULL, fuzz_fuzzer_thread,
			       (void *)(uintptr_t)i);
	pthread_create(&threads[i], NULL, fuzz_staller_thread, NULL);
	for (i = 0; i <= FUZZ_NR_FUZZERS; i++)
		pthread_join(threads[i], NULL);
	took = timespec_elapsed(start);

	sync_global_from_guest(t.vm, fuzz_res);
	sync_global_from_guest(t.vm, fuzz_touched);

	for (i = 0; i < FUZZ_NR_FUZZERS; i++) {
		read_apf_stats(t.vcpus[i], stats);
		nr_wrong += fuzz_report(i, stats);
		/* A reason of 2 in a block can only come from the host. */
		TEST_ASSERT(fuzz_res[i].wake_all,
			    "vCPU %u: no ENABLE of %lu found its wake-all", i,
			    fuzz_res[i].registered);
		/* Only the last round faulted. */
		TEST_ASSERT_EQ(stats[APF_STAT_NOT_PRESENT], 1);
	}
	read_apf_stats(t.vcpus[FUZZ_STALLER], stats);
	TEST_ASSERT_EQ(stats[APF_STAT_NOT_PRESENT], FUZZ_NR_STALLED);
	TEST_ASSERT_EQ(stats[APF_STAT_READY], FUZZ_NR_STALLED + 1);
	/* The retries after PAGE_READY did not wait in userfaultfd. */
	for (i = 0; i < FUZZ_NR_STALLED; i++)
		TEST_ASSERT_EQ(pager_state(i).nr_requests, 1);
	ksft_print_msg("fuzz: %lu calls in %ld.%03lds, %u faults stalled meanwhile\n",
		       fuzz_res[0].calls + fuzz_res[1].calls, took.tv_sec,
		       took.tv_nsec / 1000000, FUZZ_NR_STALLED);

	for (i = 0; i < FUZZ_NR_CANARY; i++)
		nr_bad += fuzz_canary_check(t.vm, canary[i].gpa, canary[i].len,
					    &nr_written);
	for (i = 0, j = 0; i < FUZZ_MAX_BLOCKS; i++)
		j += fuzz_touched[i];
	ksft_print_msg("fuzz: %u blocks zeroed by the guest, %lu hold a wake-all\n",
		       j, nr_written);

	TEST_ASSERT(!nr_bad, "%lu bytes of guest memory changed", nr_bad);
	TEST_ASSERT(!nr_wrong, "%lu results not allowed by the ABI", nr_wrong);
	TEST_ASSERT(nr_written, "No wake-all left in the fuzzed memslots");

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * teardown_loop: VMs ended while a fetch is stalled in userfaultfd
 * ---------------------------------------------------------------------
 *
 * One VM after another, each in a process of its own, registers a block
 * and faults at EL0 on a page that the pager never serves, so the fetch
 * waits in userfaultfd. The VM is then ended while the fetch waits, in
 * turn by deleting the memslot of the page, by a vCPU reset, or by
 * freeing the VM (closing the vGIC's fd too, the last reference). Only
 * after that is the uffd closed, which ends the fetch. Nothing may wait
 * for the fetch meanwhile: a watchdog closes the uffd if the ending takes
 * TEARDOWN_HANG_S, and the test fails (an ending that hung once is not
 * tried again). No memory may be left behind either: Slab and
 * MemAvailable of /proc/meminfo must be the same after the loop as
 * before it, within a tolerance.
 *
 * Asserted, for each VM: its EL0 access takes one PAGE_NOT_PRESENT and
 * the page gets exactly one uffd request (the stalled fetch); the ending
 * returns before the watchdog fires; the VM's process exits with success.
 * After a memslot deletion the guest then gets a PAGE_READY with its
 * token, or a wake-all. After a reset, once the fetch is over (the page is
 * resident) and has had time to end, the BLOCK attribute reads 0 and the
 * old block is byte for byte as the reset found it. Over the loop: no
 * ending ever waited, Slab grew by at most TEARDOWN_SLAB_TOL_KB and
 * MemAvailable (per-CPU free lists included) shrank by at most
 * TEARDOWN_AVAIL_TOL_KB; both only without kmemleak, whose scan judges
 * leaks otherwise.
 */
#define TEARDOWN_WARMUP		3	/* one of each ending, not measured */
#define TEARDOWN_VMS		60	/* measured */
#define TEARDOWN_HANG_S		10
#define TEARDOWN_CHILD_S	120
#define TEARDOWN_HUNG		10	/* exit status of a VM's process */

/*
 * Under QEMU TCG, a VM of this test that is never freed keeps about 64 KiB
 * of Slab, and a VM's process whose mm is never freed (it holds the
 * guest's RAM) about 1.6 MiB of memory. Between the two readings, with
 * nothing leaking, Slab moved by up to 36 KiB, and MemAvailable plus the
 * free pages on the per-CPU lists (which MemAvailable leaves out, and
 * which alone moved it by up to 3.6 MiB) by up to 100 KiB. So more than
 * about 2 KiB of slab or 4 pages leaked per VM fails the test, and so does
 * a single leaked mm; a smaller object leaked per VM (a fetch's work item)
 * goes unnoticed.
 */
#define TEARDOWN_SLAB_TOL_KB	128
#define TEARDOWN_AVAIL_TOL_KB	1024

enum {
	END_DELETE_SLOT,
	END_RESET,
	END_FREE,
	NR_ENDINGS,
};

static const char * const ending_names[NR_ENDINGS] = {
	[END_DELETE_SLOT]	= "memslot deleted",
	[END_RESET]		= "vCPU reset",
	[END_FREE]		= "VM freed",
};

static void guest_teardown(void)
{
	uint32_t token;

	guest_setup();
	guest_enable(0);

	/* Nobody serves page 0. */
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	token = ev.np_token[0];
	snapshot_block(&reset_block, apf_block);
	GUEST_SYNC1(STAGE_PENDING);

	/*
	 * The memslot is gone and so is the uffd: the fetch failed, but it
	 * is over, and its PAGE_READY (or a wake-all) must come.
	 */
	guest_wait_ready(2);
	__GUEST_ASSERT(ev.ready_token[1] == token ||
		       ev.ready_token[1] == KVM_ASYNC_PF_WAKE_ALL_TOKEN,
		       "PAGE_READY for token 0x%x, expected 0x%x",
		       ev.ready_token[1], token);
	GUEST_DONE();
}

/* After the reset, once the fetch is over: nothing comes of it. */
static void guest_teardown_reset(void)
{
	struct kvm_vcpu_pv_apf_data *blk = (void *)params.block_gpa[0];

	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_VERSION, 0, 0),
			SMCCC_RET_SUCCESS);
	assert_block_unchanged(&reset_block, blk);
	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool armed, fired;
	struct apf_vm *t;
} watchdog = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
};

/* Closing the uffd ends the stalled fetch: it fails or gets a zero page. */
static void teardown_release_locked(struct apf_vm *t)
{
	if (!t->uffd)
		return;
	uffd_stop_demand_paging(t->uffd);
	t->uffd = NULL;
	pager.uffd = -1;
	free(pager.buf);
}

static void *teardown_watchdog(void *arg)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += TEARDOWN_HANG_S;

	pthread_mutex_lock(&watchdog.lock);
	while (watchdog.armed && !watchdog.fired) {
		if (pthread_cond_timedwait(&watchdog.cond, &watchdog.lock,
					   &deadline) == ETIMEDOUT &&
		    watchdog.armed) {
			watchdog.fired = true;
			teardown_release_locked(watchdog.t);
		}
	}
	pthread_mutex_unlock(&watchdog.lock);
	return NULL;
}

/* Whether test page 0 is resident, i.e. its fetch is over */
static bool teardown_page_in(void)
{
	unsigned char vec;

	TEST_ASSERT(!mincore(pager.hva, getpagesize(), &vec),
		    "mincore() failed, errno %d", errno);
	return vec & 1;
}

/* Runs in the VM's own process; exits with TEARDOWN_HUNG if it waited. */
static void teardown_one(int ending)
{
	uint64_t stack, block;
	pthread_t thread;
	struct apf_vm t;
	struct ucall uc;
	bool hung;
	int i;

	apf_vm_create(&t, guest_teardown);
	apf_vm_start_pager(&t);
	run_to_stage(t.vcpu, STAGE_PENDING, &uc);
	pager_wait_requests(0, 1);
	TEST_ASSERT_EQ(pager_state(0).nr_requests, 1);

	watchdog.t = &t;
	watchdog.armed = true;
	pthread_create(&thread, NULL, teardown_watchdog, NULL);

	switch (ending) {
	case END_DELETE_SLOT:
		vm_mem_region_delete(t.vm, TEST_SLOT);
		break;
	case END_RESET:
		aarch64_vcpu_setup(t.vcpu, NULL);	/* KVM_ARM_VCPU_INIT */
		break;
	case END_FREE:
		/* The vGIC's fd holds the last reference to the VM. */
		kvm_vm_free(t.vm);
		close(t.gic_fd);
		break;
	}

	pthread_mutex_lock(&watchdog.lock);
	watchdog.armed = false;
	hung = watchdog.fired;
	pthread_cond_signal(&watchdog.cond);
	teardown_release_locked(&t);
	pthread_mutex_unlock(&watchdog.lock);
	pthread_join(thread, NULL);

	switch (ending) {
	case END_DELETE_SLOT:
		run_to_done(t.vcpu);
		apf_vm_destroy(&t);
		break;
	case END_RESET:
		/* Once the fetch is over, the old block stays untouched. */
		for (i = 0; !teardown_page_in(); i++) {
			TEST_ASSERT(i < TEARDOWN_HANG_S * 10,
				    "The fetch is not over after the uffd was closed");
			usleep(100 * 1000);
		}
		apf_settle();
		vcpu_device_attr_get(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
				     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block);
		TEST_ASSERT_EQ(block, 0);
		vcpu_init_descriptor_tables(t.vcpu);
		stack = vm_vaddr_alloc(t.vm, 4 * t.vm->page_size,
				       KVM_UTIL_MIN_VADDR);
		vcpu_set_reg(t.vcpu, ARM64_CORE_REG(sp_el1),
			     stack + 4 * t.vm->page_size);
		vcpu_set_reg(t.vcpu, ARM64_CORE_REG(regs.pc),
			     (uint64_t)guest_teardown_reset);
		run_to_done(t.vcpu);
		apf_vm_destroy(&t);
		break;
	case END_FREE:
		break;
	}
	exit(hung ? TEARDOWN_HUNG : KSFT_PASS);
}

static int teardown_run(int ending)
{
	int status, i;
	pid_t pid;

	pid = fork();
	TEST_ASSERT(pid >= 0, "fork() failed, errno %d", errno);
	if (!pid)
		teardown_one(ending);

	for (i = 0; waitpid(pid, &status, WNOHANG) != pid; i++) {
		if (i == TEARDOWN_CHILD_S * 10) {
			kill(pid, SIGKILL);
			TEST_FAIL("VM process %d (%s) stuck for %ds",
				  pid, ending_names[ending], TEARDOWN_CHILD_S);
		}
		usleep(100 * 1000);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == KSFT_SKIP)
		exit(KSFT_SKIP);
	TEST_ASSERT(WIFEXITED(status) && (WEXITSTATUS(status) == KSFT_PASS ||
					  WEXITSTATUS(status) == TEARDOWN_HUNG),
		    "VM process (%s) ended with status 0x%x",
		    ending_names[ending], status);
	return WEXITSTATUS(status);
}

static uint64_t meminfo_kb(const char *field)
{
	size_t len = strlen(field);
	uint64_t val = 0;
	char line[128];
	FILE *f;

	f = fopen("/proc/meminfo", "r");
	TEST_ASSERT(f, "Cannot open /proc/meminfo, errno %d", errno);
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, field, len)) {
			val = strtoull(line + len, NULL, 10);
			break;
		}
	}
	fclose(f);
	TEST_ASSERT(val, "No %s in /proc/meminfo", field);
	return val;
}

/* Free pages on the per-CPU lists, which MemAvailable does not count */
static uint64_t pcp_free_kb(void)
{
	uint64_t pages = 0, val;
	char line[128];
	FILE *f;

	f = fopen("/proc/zoneinfo", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %lu", &val) == 1)
			pages += val;
	fclose(f);
	return pages * getpagesize() / 1024;
}

struct teardown_mem {
	uint64_t slab, avail, pcp;	/* kB */
};

/* Let deferred frees (RCU, workers) happen and drop the caches. */
static void teardown_meminfo(struct teardown_mem *mem)
{
	int fd;

	sleep(1);
	fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
	if (fd >= 0) {
		/* 4: no message about it on the console */
		TEST_ASSERT(write(fd, "4\n", 2) == 2 && write(fd, "3\n", 2) == 2,
			    "drop_caches failed, errno %d", errno);
		close(fd);
	}
	mem->slab = meminfo_kb("Slab:");
	mem->avail = meminfo_kb("MemAvailable:");
	mem->pcp = pcp_free_kb();
}

/* How much Slab grew from @m0 to @m1, in kB */
static int64_t slab_growth(struct teardown_mem *m0, struct teardown_mem *m1)
{
	return (int64_t)(m1->slab - m0->slab);
}

/* How much available memory, free pages on per-CPU lists included, shrank */
static int64_t avail_loss(struct teardown_mem *m0, struct teardown_mem *m1)
{
	return (int64_t)(m0->avail + m0->pcp - m1->avail - m1->pcp);
}

static void test_teardown_loop(void)
{
	unsigned int i, k, nr_vms = 0, nr[NR_ENDINGS] = {};
	struct teardown_mem mem[2];
	bool hung[NR_ENDINGS] = {};
	struct timespec start, took;
	int ending;

	clock_gettime(CLOCK_MONOTONIC, &start);

	for (i = 0; i < TEARDOWN_WARMUP + TEARDOWN_VMS; i++) {
		if (i == TEARDOWN_WARMUP)
			teardown_meminfo(&mem[0]);

		/* Instead of one that hung, the next one that did not */
		for (k = 0; k < NR_ENDINGS && hung[(i + k) % NR_ENDINGS]; k++)
			;
		if (k == NR_ENDINGS)
			break;
		ending = (i + k) % NR_ENDINGS;

		if (teardown_run(ending) == TEARDOWN_HUNG) {
			ksft_print_msg("teardown_loop: VM %u: %s: waited for the stalled fetch\n",
				       i, ending_names[ending]);
			hung[ending] = true;
		}
		nr[ending]++;
		nr_vms++;
	}

	/* Wait for the slowest deferred frees, but not for a leak. */
	for (k = 0; k < 10; k++) {
		teardown_meminfo(&mem[1]);
		if (slab_growth(&mem[0], &mem[1]) <= TEARDOWN_SLAB_TOL_KB &&
		    avail_loss(&mem[0], &mem[1]) <= TEARDOWN_AVAIL_TOL_KB)
			break;
	}

	took = timespec_elapsed(start);
	ksft_print_msg("teardown_loop: %u VMs in %ld.%03lds (%u %s, %u %s, %u %s), %u measured\n",
		       nr_vms, took.tv_sec, took.tv_nsec / 1000000,
		       nr[END_DELETE_SLOT], ending_names[END_DELETE_SLOT],
		       nr[END_RESET], ending_names[END_RESET],
		       nr[END_FREE], ending_names[END_FREE],
		       nr_vms - min_t(unsigned int, nr_vms, TEARDOWN_WARMUP));
	ksft_print_msg("teardown_loop: Slab %lu kB -> %lu kB, MemAvailable %lu kB -> %lu kB\n",
		       mem[0].slab, mem[1].slab, mem[0].avail, mem[1].avail);
	ksft_print_msg("teardown_loop: free pages on per-CPU lists %lu kB -> %lu kB\n",
		       mem[0].pcp, mem[1].pcp);

	TEST_ASSERT(!hung[END_DELETE_SLOT] && !hung[END_RESET] && !hung[END_FREE],
		    "An ending waited for a fetch stalled in userfaultfd");

	/*
	 * On a debug kernel (make test-debug), KASAN's quarantine and
	 * kmemleak's own bookkeeping hold freed memory back, so these figures
	 * say nothing there; kmemleak's scan, run after the tests, judges
	 * leaks instead.
	 */
	if (!access("/sys/kernel/debug/kmemleak", F_OK)) {
		ksft_print_msg("teardown_loop: kmemleak present: leaks are left to its scan\n");
		return;
	}
	TEST_ASSERT(slab_growth(&mem[0], &mem[1]) <= TEARDOWN_SLAB_TOL_KB,
		    "Slab grew by %ld kB over %u VMs",
		    slab_growth(&mem[0], &mem[1]), TEARDOWN_VMS);
	TEST_ASSERT(avail_loss(&mem[0], &mem[1]) <= TEARDOWN_AVAIL_TOL_KB,
		    "MemAvailable (with the per-CPU lists) shrank by %ld kB over %u VMs",
		    avail_loss(&mem[0], &mem[1]), TEARDOWN_VMS);
}

/* ---------------------------------------------------------------------
 * Harness
 * ---------------------------------------------------------------------
 */
/* ---------------------------------------------------------------------
 * 12. vCPU reset with a fault in flight
 *
 * Asserted: KVM_ARM_VCPU_INIT returns while the fetch of page 0 is blocked
 * in userfaultfd; after it the BLOCK attribute reads 0 and the IRQ
 * attribute keeps the VMM's non-default choice (21, which the guest also
 * read from the IRQ subcall). Once the page is served and the fetch has
 * had time to end, three guest entries later the old block is byte for
 * byte as it was before the reset, BLOCK is still 0, and neither
 * apf_ready nor apf_not_present moved since the reset.
 * ---------------------------------------------------------------------
 */
#define RESET_IRQ	MIGRATION_IRQ

static void guest_reset_pending(void)
{
	guest_setup();
	guest_enable(0);

	/* Page 0 stays with the host: its fetch is in flight at the reset. */
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	snapshot_block(&reset_block, apf_block);
	GUEST_SYNC1(STAGE_PENDING);
	GUEST_FAIL("Resumed after the vCPU reset");
}

/* Where the vCPU restarts after the reset: the old block stays untouched. */
static void guest_after_reset(void)
{
	struct kvm_vcpu_pv_apf_data *blk = (void *)params.block_gpa[0];
	int i;

	/* The host lets the old fetch complete now. */
	GUEST_SYNC1(STAGE_RUNNING);
	/* Every guest entry is a chance for the host to deliver something. */
	for (i = 0; i < 3; i++)
		GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_VERSION, 0, 0),
				SMCCC_RET_SUCCESS);
	assert_block_unchanged(&reset_block, blk);
	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

static void test_reset(void)
{
	uint64_t before[NR_APF_STATS], after[NR_APF_STATS], stack, val;
	size_t stack_size;
	struct apf_vm t;
	struct ucall uc;

	apf_vm_create(&t, guest_reset_pending);
	apf_vm_start_pager(&t);
	/* Not the default: a reset that reverted to it would be seen. */
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, RESET_IRQ, 0);
	params.expected_irq = RESET_IRQ;
	sync_global_to_guest(t.vm, params);

	run_to_stage(t.vcpu, STAGE_PENDING, &uc);
	pager_wait_requests(0, 1);
	read_apf_stats(t.vcpu, before);

	/*
	 * The reset must not wait for the fetch, which stays blocked in
	 * userfaultfd until page 0 is released below, after the reset; its
	 * PAGE_READY must never be delivered.
	 */
	aarch64_vcpu_setup(t.vcpu, NULL);	/* KVM_ARM_VCPU_INIT: the reset */
	vcpu_init_descriptor_tables(t.vcpu);
	stack_size = 4 * t.vm->page_size;
	stack = vm_vaddr_alloc(t.vm, stack_size, KVM_UTIL_MIN_VADDR);
	vcpu_set_reg(t.vcpu, ARM64_CORE_REG(sp_el1), stack + stack_size);
	vcpu_set_reg(t.vcpu, ARM64_CORE_REG(regs.pc), (uint64_t)guest_after_reset);

	/* The registration is gone, the VMM's PPI choice is not. */
	vcpu_device_attr_get(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
			     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &val);
	TEST_ASSERT_EQ(val, 0);
	val = 0;
	vcpu_device_attr_get(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
			     KVM_ARM_VCPU_ASYNC_PF_IRQ, &val);
	TEST_ASSERT_EQ(val, RESET_IRQ);

	run_to_stage(t.vcpu, STAGE_RUNNING, &uc);
	pager_release(0, 1);
	apf_settle();
	run_to_done(t.vcpu);
	read_apf_stats(t.vcpu, after);
	TEST_ASSERT_EQ(after[APF_STAT_READY], before[APF_STAT_READY]);
	TEST_ASSERT_EQ(after[APF_STAT_NOT_PRESENT], before[APF_STAT_NOT_PRESENT]);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 13-15. A fetch stuck in userfaultfd wedges nothing
 *
 * The VMM runs in a child process whose uffd nobody serves, so the
 * background fetch of page 0 stays blocked in userfaultfd for good. The
 * child reports its progress through a pipe. Whatever it does with its
 * KVM files, or however it dies, it must exit, and its VM must be freed
 * (its directory in KVM's debugfs goes away).
 *
 * Asserted in each: the guest takes one PAGE_NOT_PRESENT for page 0 and
 * the uffd then holds a page fault message for page 0 (the background
 * fetch, now blocked); the VM's debugfs directory exists while the fetch
 * is stalled; every report of the child comes within HANG_TIMEOUT_S, and
 * once it is told to go, the child exits as expected (SIGKILL, or exit
 * status KSFT_PASS) and its VM's directory is gone within HANG_TIMEOUT_S.
 * ---------------------------------------------------------------------
 */

/* Only detects a hang; everything here takes well under a second. */
#define HANG_TIMEOUT_S		60
#define KVM_DEBUGFS		"/sys/kernel/debug/kvm"

enum { STALL_PENDING = 'p', STALL_DISABLED = 'd', STALL_CLOSED = 'c' };

static void guest_stall(void)
{
	guest_setup();
	guest_enable(0);

	/* Nobody serves page 0: its fetch never completes. */
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	GUEST_SYNC1(STAGE_PENDING);

	/* Must not wait for the fetch. */
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_DISABLE, 0, 0), SMCCC_RET_SUCCESS);
	GUEST_SYNC1(STAGE_RUNNING);
	GUEST_FAIL("Resumed after DISABLE");
}

static int stall_uffd_create(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int uffd;

	uffd = syscall(__NR_userfaultfd, O_CLOEXEC);
	TEST_ASSERT(uffd >= 0, "userfaultfd() failed, errno %d", errno);
	TEST_ASSERT(!ioctl(uffd, UFFDIO_API, &api), "UFFDIO_API failed, errno %d", errno);
	return uffd;
}

static void stall_uffd_register(int uffd, struct kvm_vm *vm)
{
	struct uffdio_register reg = {
		.range.start = (uint64_t)addr_gpa2hva(vm, TEST_GPA),
		.range.len = NR_TEST_PAGES * params.stride,
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	TEST_ASSERT(!ioctl(uffd, UFFDIO_REGISTER, &reg),
		    "UFFDIO_REGISTER failed, errno %d", errno);
}

/*
 * Waits until the background fetch of page 0 is blocked in userfaultfd: it
 * queues a fault message before it sleeps. (The vCPU's own first attempt
 * does not wait, and queues none.) Nobody ever serves it.
 */
static void stall_uffd_wait_fetch(int uffd, struct kvm_vm *vm)
{
	struct uffd_msg msg;

	TEST_ASSERT(read(uffd, &msg, sizeof(msg)) == sizeof(msg),
		    "uffd read failed, errno %d", errno);
	TEST_ASSERT_EQ(msg.event, UFFD_EVENT_PAGEFAULT);
	TEST_ASSERT_EQ(msg.arg.pagefault.address & ~(params.stride - 1),
		       (uint64_t)addr_gpa2hva(vm, test_page(0)));
}

static void stall_report(int fd, char what)
{
	TEST_ASSERT(write(fd, &what, 1) == 1, "pipe write failed, errno %d", errno);
}

/*
 * Runs the guest until its fetch of page 0 is blocked in userfaultfd, then
 * reports STALL_PENDING.
 */
static void stall_vm_create(struct apf_vm *t, int uffd, int report_fd)
{
	struct ucall uc;

	apf_vm_create(t, guest_stall);
	if (uffd < 0)
		uffd = stall_uffd_create();
	stall_uffd_register(uffd, t->vm);
	run_to_stage(t->vcpu, STAGE_PENDING, &uc);
	stall_uffd_wait_fetch(uffd, t->vm);
	stall_report(report_fd, STALL_PENDING);
}

/* The next report of the child, or 0 if it sent none in time. */
static char stall_wait_report(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	char what;

	if (poll(&pfd, 1, HANG_TIMEOUT_S * 1000) != 1 || read(fd, &what, 1) != 1)
		return 0;
	return what;
}

/* Whether KVM's debugfs still has a VM of @pid. */
static bool vm_of_pid_exists(pid_t pid)
{
	char prefix[32];
	struct dirent *d;
	bool found = false;
	DIR *dir;

	dir = opendir(KVM_DEBUGFS);
	TEST_ASSERT(dir, "No %s (debugfs not mounted?)", KVM_DEBUGFS);
	snprintf(prefix, sizeof(prefix), "%d-", pid);
	while ((d = readdir(dir)))
		found |= !strncmp(d->d_name, prefix, strlen(prefix));
	closedir(dir);
	return found;
}

/*
 * Waits for the child to exit and for its VM to be freed; fails the test
 * if either hangs. Returns the child's wait status.
 */
static int stall_reap(pid_t pid)
{
	int status, i;

	for (i = 0; waitpid(pid, &status, WNOHANG) != pid; i++) {
		TEST_ASSERT(i < HANG_TIMEOUT_S * 10,
			    "VMM process %d still not gone %ds after it was told to exit",
			    pid, HANG_TIMEOUT_S);
		usleep(100 * 1000);
	}
	for (i = 0; vm_of_pid_exists(pid); i++) {
		TEST_ASSERT(i < HANG_TIMEOUT_S * 10,
			    "The VM of process %d still exists %ds after it exited",
			    pid, HANG_TIMEOUT_S);
		usleep(100 * 1000);
	}
	return status;
}

static pid_t stall_fork(int pipefd[2])
{
	pid_t pid;

	TEST_ASSERT(!pipe(pipefd), "pipe() failed, errno %d", errno);
	pid = fork();
	TEST_ASSERT(pid >= 0, "fork() failed, errno %d", errno);
	if (pid)
		close(pipefd[1]);
	else
		close(pipefd[0]);
	return pid;
}

/*
 * 13. kill_uffd_low_fd: the uffd has the lowest fd number, so an exiting
 * VMM releases it after its KVM files: VM teardown must not wait for the
 * fetch stuck in it. Asserted: the killed VMM dies of SIGKILL and its VM
 * goes away.
 */
static void test_kill_uffd_low_fd(void)
{
	int pipefd[2], status;
	struct apf_vm t;
	pid_t pid;

	pid = stall_fork(pipefd);
	if (!pid) {
		int uffd = stall_uffd_create();

		stall_vm_create(&t, uffd, pipefd[1]);
		for (;;)
			pause();
	}

	TEST_ASSERT_EQ(stall_wait_report(pipefd[0]), STALL_PENDING);
	TEST_ASSERT(vm_of_pid_exists(pid), "No VM of process %d in debugfs", pid);
	kill(pid, SIGKILL);
	status = stall_reap(pid);
	TEST_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		    "VMM ended with status 0x%x", status);
}

/*
 * 14. kill_in_disable: a guest's DISABLE with a fetch stuck must return,
 * and the VMM die. Asserted: DISABLE returns SUCCESS, after which the BLOCK
 * attribute reads 0; the killed VMM dies of SIGKILL and its VM goes away.
 */
static void test_kill_in_disable(void)
{
	int pipefd[2], status;
	struct apf_vm t;
	struct ucall uc;
	uint64_t block;
	pid_t pid;

	pid = stall_fork(pipefd);
	if (!pid) {
		stall_vm_create(&t, -1, pipefd[1]);
		run_to_stage(t.vcpu, STAGE_RUNNING, &uc);
		vcpu_device_attr_get(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
				     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block);
		TEST_ASSERT_EQ(block, 0);
		stall_report(pipefd[1], STALL_DISABLED);
		for (;;)
			pause();
	}

	TEST_ASSERT_EQ(stall_wait_report(pipefd[0]), STALL_PENDING);
	TEST_ASSERT_EQ(stall_wait_report(pipefd[0]), STALL_DISABLED);
	TEST_ASSERT(vm_of_pid_exists(pid), "No VM of process %d in debugfs", pid);
	kill(pid, SIGKILL);
	status = stall_reap(pid);
	TEST_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		    "VMM ended with status 0x%x", status);
}

/*
 * 15. close_kvm_before_uffd: one thread closes its KVM files, then its
 * uffd: neither close waits. Asserted: both closes return (the reports
 * come in time) and the VMM exits with KSFT_PASS; with its KVM files
 * closed but the fetch still stalled, its VM still exists (the fetch holds
 * a reference to it), and once the uffd is closed too it goes away.
 */
static void test_close_kvm_before_uffd(void)
{
	int pipefd[2], status, uffd;
	struct apf_vm t;
	pid_t pid;

	pid = stall_fork(pipefd);
	if (!pid) {
		uffd = stall_uffd_create();
		stall_vm_create(&t, uffd, pipefd[1]);
		/* The vGIC's fd holds a reference to the VM too. */
		close(t.gic_fd);
		kvm_vm_free(t.vm);
		/* The stalled fetch keeps the VM, or stall_reap() proves nothing. */
		TEST_ASSERT(vm_of_pid_exists(getpid()),
			    "VM freed while its fetch was stalled");
		stall_report(pipefd[1], STALL_CLOSED);
		close(uffd);
		exit(KSFT_PASS);
	}

	TEST_ASSERT_EQ(stall_wait_report(pipefd[0]), STALL_PENDING);
	TEST_ASSERT_EQ(stall_wait_report(pipefd[0]), STALL_CLOSED);
	status = stall_reap(pid);
	TEST_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == KSFT_PASS,
		    "VMM ended with status 0x%x", status);
}

/* ---------------------------------------------------------------------
 * 16. default_hidden: APF is opt-in
 *
 * A VMM that does not know the BLOCK attribute cannot migrate it, so KVM
 * hides APF until the VMM sets its bit in KVM_REG_ARM_VENDOR_HYP_BMAP_2.
 * ---------------------------------------------------------------------
 */
static void test_default_hidden(void)
{
	struct apf_vm t;
	uint64_t bmap;

	__apf_vm_create(&t, guest_hidden, 1, false);

	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	TEST_ASSERT(!(bmap & BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF)),
		    "APF offered by default in BMAP_2 (0x%lx)", bmap);
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			params.block_gpa[0] | KVM_ASYNC_PF_ENABLED, EINVAL);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 17. hide_after_restore: no hiding under a restored registration
 *
 * The guest could no longer ACK a PAGE_READY: the write is refused until
 * the BLOCK attribute is cleared.
 * ---------------------------------------------------------------------
 */
static void test_hide_after_restore(void)
{
	uint64_t bmap, now, hidden;
	struct apf_vm t;
	int ret;

	apf_vm_create(&t, guest_hidden);
	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	hidden = bmap & ~BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF);

	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			params.block_gpa[0] | KVM_ASYNC_PF_ENABLED, 0);
	ret = __vcpu_set_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, hidden);
	TEST_ASSERT(ret && errno == EBUSY,
		    "APF hidden under an enabled block (ret %d, errno %d)", ret, errno);
	vcpu_get_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &now);
	TEST_ASSERT_EQ(now, bmap);
	check_apf_attrs(t.vcpu, KVM_ASYNC_PF_DEFAULT_IRQ,
			params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);

	/* Once the registration is dropped, hiding works. */
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK, 0, 0);
	vcpu_set_reg(t.vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, hidden);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 18. attr_high_bits: 64-bit ids and arguments, and the init order
 * ---------------------------------------------------------------------
 */
static void guest_high_bits(void)
{
	static const uint64_t subcalls[] = {
		BIT_ULL(32) | KVM_ASYNC_PF_CALL_VERSION,
		BIT_ULL(63) | KVM_ASYNC_PF_CALL_ACK,
		BIT_ULL(32) | KVM_ASYNC_PF_CALL_ENABLE,
	};
	unsigned int i;

	guest_setup();
	for (i = 0; i < ARRAY_SIZE(subcalls); i++)
		__GUEST_ASSERT(apf_call(subcalls[i], params.block_gpa[0],
					KVM_ASYNC_PF_ENABLED) == SMCCC_RET_NOT_SUPPORTED,
			       "Subcall 0x%lx not refused", subcalls[i]);
	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

static void test_attr_high_bits(void)
{
	static const uint64_t attrs[] = {
		BIT_ULL(32) | KVM_ARM_VCPU_ASYNC_PF_IRQ,
		BIT_ULL(63) | KVM_ARM_VCPU_ASYNC_PF_BLOCK,
	};
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	struct apf_vm t;
	uint64_t val = 0;
	unsigned int i;
	int ret;

	/* Before KVM_ARM_VCPU_INIT: the IRQ default, and no BLOCK yet. */
	vm = vm_create_barebones();
	vcpu = __vm_vcpu_add(vm, 0);
	vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
			     KVM_ARM_VCPU_ASYNC_PF_IRQ, &val);
	TEST_ASSERT_EQ(val, KVM_ASYNC_PF_DEFAULT_IRQ);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			BLOCK_GPA | KVM_ASYNC_PF_ENABLED, ENOEXEC);
	kvm_vm_free(vm);

	apf_vm_create(&t, guest_high_bits);
	for (i = 0; i < ARRAY_SIZE(attrs); i++) {
		val = KVM_ASYNC_PF_DEFAULT_IRQ;
		ret = __vcpu_has_device_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL, attrs[i]);
		TEST_ASSERT(ret && errno == ENXIO, "HAS 0x%lx: ret %d errno %d",
			    attrs[i], ret, errno);
		ret = __vcpu_device_attr_set(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					     attrs[i], &val);
		TEST_ASSERT(ret && errno == ENXIO, "SET 0x%lx: ret %d errno %d",
			    attrs[i], ret, errno);
		ret = __vcpu_device_attr_get(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
					     attrs[i], &val);
		TEST_ASSERT(ret && errno == ENXIO, "GET 0x%lx: ret %d errno %d",
			    attrs[i], ret, errno);
	}
	check_apf_attrs(t.vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 19. stale_ack_after_restore: an ACK cannot lose an event
 *
 * A VMM saves the vCPU after the guest took a PAGE_READY out of the block
 * but before its ACK. On restore, KVM sends a wake-all, and then the ACK
 * arrives. Registering the block again from the guest takes the host
 * through the same path as restoring the BLOCK attribute: the old event is
 * forgotten and a wake-all is sent at once.
 * ---------------------------------------------------------------------
 */
static void guest_stale_ack(void)
{
	uint32_t ready;

	guest_setup();
	guest_enable(0);

	/* Page 0 was released up front: its PAGE_READY follows at once. */
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	guest_wait_block_ready();
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->token), ev.np_token[0]);
	WRITE_ONCE(apf_block->reason, 0);

	/* The "restore" */
	ready = READ_ONCE(ev.nr_ready);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ENABLE, params.block_gpa[0],
				 KVM_ASYNC_PF_ENABLED), SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->reason), KVM_PV_REASON_PAGE_READY);
	GUEST_ASSERT_EQ(READ_ONCE(apf_block->token), KVM_ASYNC_PF_WAKE_ALL_TOKEN);

	/* The stale ACK, for the event consumed before the "save" */
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	__GUEST_ASSERT(gic_irq_get_pending(apf_irq),
		       "The ACK lowered the line of a PAGE_READY still in the block");

	guest_wait_ready(ready + 1);
	GUEST_ASSERT_EQ(ev.ready_token[ready], KVM_ASYNC_PF_WAKE_ALL_TOKEN);
	guest_assert_quiet(ready + 1);
	GUEST_DONE();
}

static void test_stale_ack_after_restore(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_stale_ack);
	apf_vm_start_pager(&t);
	pager_release(0, 1);
	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 23-30. The ABI's corners
 *
 * Each of these ends its process if it hangs for ABI_TIMEOUT_S: a vCPU
 * that waits for good for an event, or in the host for a stalled fetch,
 * fails its subtest instead of the whole run.
 * ---------------------------------------------------------------------
 */
#define ABI_TIMEOUT_S		120
#define ESR_EC_IABT_LOW		0x20
#define ESR_EC_OF(esr)		(((esr) >> ESR_EC_SHIFT) & ESR_EC_MASK)

static void abi_timeout(int sig)
{
	static const char msg[] = "# subtest hung, giving up\n";

	if (write(STDOUT_FILENO, msg, sizeof(msg) - 1) < 0)
		_exit(KSFT_FAIL);
	_exit(KSFT_FAIL);
}

static void abi_watchdog(void)
{
	signal(SIGALRM, abi_timeout);
	alarm(ABI_TIMEOUT_S);
}

/*
 * Like guest_setup(), for VMs that may hide APF or have no vGIC: returns
 * whether APF is offered.
 */
static bool guest_setup_opt(bool vgic)
{
	uint64_t mmfr1 = read_sysreg_s(SYS_ID_AA64MMFR1_EL1);
	struct arm_smccc_res res;

	if (FIELD_GET(ID_AA64MMFR1_EL1_PAN_MASK, mmfr1))
		set_pstate_pan(0);
	if (vgic)
		gic_init(GIC_V3, params.nr_vcpus);

	res = apf_hvc(KVM_ASYNC_PF_CALL_IRQ, 0, 0);
	if (res.a0 != SMCCC_RET_SUCCESS)
		return false;
	apf_irq = res.a1;
	if (vgic)
		gic_irq_enable(apf_irq);
	return true;
}

/* One EL0 access through @args: a load from @addr, or a store of @val. */
static void guest_el0_access_at(struct el0_args *args, uint64_t addr,
				bool write, uint64_t val)
{
	args->nr = 1;
	args->addrs = (uint64_t)args->addr;
	args->vals = (uint64_t)args->val;
	args->addr[0] = addr;
	args->val[0] = write ? val : 0;

	run_at_el0(write ? ASM_SYM(el0_write_pages) : ASM_SYM(el0_read_pages),
		   (uint64_t)args, params.el0_sp);
}

static void guest_el0_access(uint64_t addr, bool write, uint64_t val)
{
	guest_el0_access_at((void *)params.el0_args, addr, write, val);
}

/* Serves test page @idx now, with @len bytes of @data and zeros after. */
static void pager_serve_data(uint32_t idx, const void *data, size_t len)
{
	struct uffdio_copy copy = {
		.dst = (uint64_t)(pager.hva + idx * pager.stride),
		.src = (uint64_t)pager.buf,
		.len = pager.stride,
	};

	pthread_mutex_lock(&pager.lock);
	TEST_ASSERT(!pager.page[idx].served, "Test page %u served twice", idx);
	memset(pager.buf, 0, pager.stride);
	memcpy(pager.buf, data, len);
	TEST_ASSERT(!ioctl(pager.uffd, UFFDIO_COPY, &copy),
		    "UFFDIO_COPY of test page %u failed, errno %d", idx, errno);
	pager.page[idx].released = true;
	pager.page[idx].served = true;
	pthread_mutex_unlock(&pager.lock);
}

/* Serves test page @idx now, with its usual pattern. */
static void pager_serve_now(uint32_t idx)
{
	pthread_mutex_lock(&pager.lock);
	pager.page[idx].released = true;
	if (!pager.page[idx].served)
		pager_serve_locked(idx);
	pthread_mutex_unlock(&pager.lock);
}

/* Like run_to_stage(), checking the BLOCK attribute whenever asked to. */
static void run_to_stage_checking(struct kvm_vcpu *vcpu, uint64_t stage,
				  struct ucall *uc)
{
	uint64_t got, block;

	while ((got = run_vcpu(vcpu, uc)) == STAGE_CHECK_BLOCK) {
		vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
				     KVM_ARM_VCPU_ASYNC_PF_BLOCK, &block);
		TEST_ASSERT(block == uc->args[1],
			    "BLOCK attribute is 0x%lx, expected 0x%lx",
			    block, uc->args[1]);
	}
	TEST_ASSERT(got == stage, "Guest reached stage %lu, expected %lu",
		    got, stage);
}

/* ---------------------------------------------------------------------
 * 23. readonly_forward_progress, 24. fetch_error_forward_progress
 *
 * When the background fetch cannot map the page, the guest's retry after
 * PAGE_READY must be resolved synchronously (apf_sync_refault), never by
 * another PAGE_NOT_PRESENT: each page gets at most one, and the VMM sees
 * what it sees with APF hidden. Each subtest runs the same guest twice,
 * APF hidden and APF offered, and compares:
 *
 *  - readonly: test pages 0 and 1 are mapped PROT_READ in the host, in
 *    the userfaultfd (MISSING) range. Page 0, not served, is written from
 *    EL0: KVM_RUN fails with EFAULT at the store, no uffd request is made;
 *    the VMM then makes it writable and serves it, and the store is
 *    retried and lands. Page 1, served on request, is read from EL0: the
 *    background fetch (which always asks for a writable page) fails at
 *    once, but the refault reads it, through one uffd request as without
 *    APF.
 *  - fetch_error: a memslot backed by a MAP_SHARED mapping of a memfd one
 *    page shorter than the mapping; the page beyond the end of the file is
 *    read from EL0 (SIGBUS in the fetch): KVM_RUN fails with EFAULT at the
 *    load; the VMM then extends the file and the load is retried and reads
 *    what the VMM wrote.
 *
 * Asserted, for each access: the same number of KVM_RUN failures (one),
 * errno and guest PC with APF hidden and offered, the same uffd requests,
 * at most one PAGE_NOT_PRESENT for its page (the guest fails on a second),
 * the PAGE_READY of its token before the retry, the data the retry reads,
 * apf_not_present == apf_sync_refault == the PAGE_NOT_PRESENTs seen, and
 * apf_ready_mapped == 0 (no page could be mapped before its PAGE_READY).
 * ---------------------------------------------------------------------
 */
#define FP_SLOT			8
#define FP_GPA			0xa0000000ULL	/* memfd, page 1 beyond EOF */
#define FP_PATTERN		0x46505f5041545445ULL
#define FP_MAX			2
#define FP_RO_WRITE		0		/* test pages */
#define FP_RO_READ		1

/* Set by the host: the EL0 accesses, in order */
static struct {
	uint32_t nr;
	bool write[FP_MAX];
	uint64_t addr[FP_MAX];
	uint64_t val[FP_MAX];	/* stored, or expected from the load */
} fp_cfg;

/* PAGE_NOT_PRESENTs the guest took for each access */
static uint32_t fp_np[FP_MAX];

static void guest_forward_progress(void)
{
	uint32_t i, np, ready;
	uint64_t addr;

	if (guest_setup_opt(true))
		guest_enable(0);

	for (i = 0; i < fp_cfg.nr; i++) {
		addr = fp_cfg.addr[i];
		np = READ_ONCE(ev.nr_not_present);
		ready = READ_ONCE(ev.nr_ready);

		guest_el0_access(addr, fp_cfg.write[i], fp_cfg.val[i]);
		if (READ_ONCE(ev.nr_not_present) != np) {
			GUEST_ASSERT_EQ(ev.np_addr[np], addr);
			guest_wait_ready(ready + 1);
			GUEST_ASSERT_EQ(ev.ready_token[ready], ev.np_token[np]);
			/* The retry: PAGE_NOT_PRESENT again would be a loop. */
			guest_el0_access(addr, fp_cfg.write[i], fp_cfg.val[i]);
		}
		fp_np[i] = READ_ONCE(ev.nr_not_present) - np;
		__GUEST_ASSERT(fp_np[i] <= 1, "%u PAGE_NOT_PRESENT for 0x%lx",
			       fp_np[i], addr);

		if (fp_cfg.write[i])
			guest_el0_access(addr, false, 0);
		GUEST_ASSERT_EQ(el0_val(0), fp_cfg.val[i]);
	}
	GUEST_DONE();
}

/* What the VMM saw of one run */
struct fp_outcome {
	int nr_err;		/* KVM_RUN failures */
	int err;		/* errno of the first */
	uint64_t pc;		/* guest PC at the first */
	uint32_t requests[FP_MAX];	/* uffd requests, readonly only */
	uint32_t np[FP_MAX];
	uint64_t stats[NR_APF_STATS];
};

/*
 * Runs the guest to GUEST_DONE. When KVM_RUN fails, @fix repairs the host
 * mapping and the vCPU runs again: the access is retried.
 */
static void fp_run(struct apf_vm *t, void (*fix)(struct apf_vm *t),
		   struct fp_outcome *o)
{
	struct ucall uc;
	int ret, err;

	memset(o, 0, sizeof(*o));
	for (;;) {
		ret = _vcpu_run(t->vcpu);
		err = errno;
		if (ret) {
			TEST_ASSERT(!o->nr_err, "KVM_RUN failed again, errno %d", err);
			o->nr_err++;
			o->err = err;
			vcpu_get_reg(t->vcpu, ARM64_CORE_REG(regs.pc), &o->pc);
			fix(t);
			continue;
		}
		switch (get_ucall(t->vcpu, &uc)) {
		case UCALL_DONE:
			break;
		case UCALL_PRINTF:
			REPORT_GUEST_PRINTF(uc);
			continue;
		case UCALL_ABORT:
			REPORT_GUEST_ASSERT(uc);
			break;
		default:
			TEST_FAIL("Unexpected exit: %s",
				  exit_reason_str(t->vcpu->run->exit_reason));
		}
		break;
	}
	sync_global_from_guest(t->vm, fp_np);
	memcpy(o->np, fp_np, sizeof(o->np));
	read_apf_stats(t->vcpu, o->stats);
}

/* The outcome with APF offered against the one with APF hidden */
static void fp_compare(const char *what, struct fp_outcome *hidden,
		       struct fp_outcome *on, uint64_t pc)
{
	uint32_t i, np = 0;

	ksft_print_msg("%s: hidden: errno %d at 0x%lx; APF: errno %d at 0x%lx, NP %u %u\n",
		       what, hidden->err, hidden->pc, on->err, on->pc,
		       on->np[0], on->np[1]);

	TEST_ASSERT(hidden->nr_err == 1 && hidden->err == EFAULT &&
		    hidden->pc == pc,
		    "APF hidden: %d KVM_RUN failures, errno %d at PC 0x%lx",
		    hidden->nr_err, hidden->err, hidden->pc);
	TEST_ASSERT(on->nr_err == hidden->nr_err && on->err == hidden->err &&
		    on->pc == hidden->pc,
		    "With APF: %d KVM_RUN failures, errno %d at PC 0x%lx",
		    on->nr_err, on->err, on->pc);

	for (i = 0; i < FP_MAX; i++) {
		TEST_ASSERT(!hidden->np[i], "PAGE_NOT_PRESENT with APF hidden");
		TEST_ASSERT(on->requests[i] == hidden->requests[i],
			    "Access %u: %u uffd requests with APF, %u hidden",
			    i, on->requests[i], hidden->requests[i]);
		np += on->np[i];
	}
	TEST_ASSERT_EQ(on->stats[APF_STAT_NOT_PRESENT], np);
	TEST_ASSERT_EQ(on->stats[APF_STAT_SYNC_REFAULT], np);
	TEST_ASSERT_EQ(on->stats[APF_STAT_READY], np + 1);	/* + wake-all */
	TEST_ASSERT_EQ(on->stats[APF_STAT_READY_MAPPED], 0);
	TEST_ASSERT_EQ(hidden->stats[APF_STAT_SYNC_REFAULT], 0);
}

static void fp_ro_fix(struct apf_vm *t)
{
	TEST_ASSERT(!pager_state(FP_RO_WRITE).nr_requests,
		    "uffd request for a write to a PROT_READ page");
	TEST_ASSERT(!mprotect(pager.hva + FP_RO_WRITE * pager.stride,
			      pager.stride, PROT_READ | PROT_WRITE),
		    "mprotect() failed, errno %d", errno);
	pager_serve_now(FP_RO_WRITE);
}

static void fp_ro_run(bool offer, struct fp_outcome *o)
{
	struct apf_vm t;
	uint32_t i;

	__apf_vm_create(&t, guest_forward_progress, 1, offer);
	apf_vm_start_pager(&t);
	TEST_ASSERT(!mprotect(pager.hva, 2 * pager.stride, PROT_READ),
		    "mprotect() failed, errno %d", errno);
	pager_release(FP_RO_READ, 1);

	fp_cfg.nr = 2;
	fp_cfg.write[0] = true;
	fp_cfg.addr[0] = test_page(FP_RO_WRITE);
	fp_cfg.val[0] = FP_PATTERN;
	fp_cfg.write[1] = false;
	fp_cfg.addr[1] = test_page(FP_RO_READ);
	fp_cfg.val[1] = page_pattern(FP_RO_READ);
	sync_global_to_guest(t.vm, fp_cfg);

	fp_run(&t, fp_ro_fix, o);
	for (i = 0; i < FP_MAX; i++)
		o->requests[i] = pager_state(i).nr_requests;
	apf_vm_destroy(&t);
}

static void test_readonly_forward_progress(void)
{
	struct fp_outcome hidden, on;

	abi_watchdog();
	fp_ro_run(false, &hidden);
	fp_ro_run(true, &on);
	fp_compare("readonly_forward_progress", &hidden, &on,
		   ASM_SYM(el0_store_insn));
	TEST_ASSERT(on.requests[FP_RO_READ] == 1,
		    "The read of a PROT_READ page made %u uffd requests",
		    on.requests[FP_RO_READ]);
}

/* Extends the memfd over the page beyond its end, which the VMM fills. */
static void fp_error_fix(struct apf_vm *t)
{
	struct userspace_mem_region *r = memslot2region(t->vm, FP_SLOT);
	uint64_t *p = (uint64_t *)((uint8_t *)r->host_mem + params.stride);
	uint64_t i;

	TEST_ASSERT(!ftruncate(r->fd, 2 * params.stride),
		    "ftruncate() failed, errno %d", errno);
	for (i = 0; i < params.stride / sizeof(uint64_t); i++)
		p[i] = FP_PATTERN;
}

static void fp_error_run(bool offer, struct fp_outcome *o)
{
	struct userspace_mem_region *r;
	uint64_t npages;
	struct apf_vm t;

	__apf_vm_create(&t, guest_forward_progress, 1, offer);
	npages = params.stride / t.vm->page_size;
	vm_userspace_mem_region_add(t.vm, VM_MEM_SRC_SHMEM, FP_GPA, FP_SLOT,
				    2 * npages, 0);
	virt_map(t.vm, FP_GPA, FP_GPA, 2 * npages);
	mark_el0_accessible(t.vm, FP_GPA, 2 * params.stride);

	/* The second page of the mapping is now beyond the end of the file. */
	r = memslot2region(t.vm, FP_SLOT);
	TEST_ASSERT(r->fd >= 0, "No memfd behind the memslot");
	TEST_ASSERT(!ftruncate(r->fd, params.stride),
		    "ftruncate() failed, errno %d", errno);

	fp_cfg.nr = 1;
	fp_cfg.write[0] = false;
	fp_cfg.addr[0] = FP_GPA + params.stride;
	fp_cfg.val[0] = FP_PATTERN;
	sync_global_to_guest(t.vm, fp_cfg);

	fp_run(&t, fp_error_fix, o);
	apf_vm_destroy(&t);
}

static void test_fetch_error_forward_progress(void)
{
	struct fp_outcome hidden, on;

	abi_watchdog();
	fp_error_run(false, &hidden);
	fp_error_run(true, &on);
	fp_compare("fetch_error_forward_progress", &hidden, &on,
		   ASM_SYM(el0_load_insn));
}

/* ---------------------------------------------------------------------
 * 25. real_sea_not_apf: a real external abort is no PAGE_NOT_PRESENT
 *
 * APF is enabled and the guest's EL0 code loads from an IPA with no
 * memslot; the VMM answers the MMIO exit with KVM_SET_VCPU_EVENTS
 * (ext_dabt_pending) instead of completing it. Asserted: the guest takes
 * a synchronous external abort (EC 0x24, FSC 0x10, FAR the address, at
 * the load) with reason 0 in its block, no PAGE_NOT_PRESENT and no
 * PAGE_READY; no apf_* statistic moves; APF works afterwards.
 * ---------------------------------------------------------------------
 */
static void guest_real_sea(void)
{
	uint32_t np;

	guest_setup();
	guest_enable(0);
	np = READ_ONCE(ev.nr_not_present);
	GUEST_SYNC1(STAGE_STATS_BASE);

	guest_el0_access(NOSLOT_GPA, false, 0);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_real_sea), 1);
	GUEST_ASSERT_EQ(ev.sea_reason, 0);
	GUEST_ASSERT_EQ(ESR_EC_OF(ev.sea_esr), ESR_EC_DABT_LOW);
	GUEST_ASSERT_EQ(ev.sea_esr & ESR_FSC_MASK, ESR_FSC_SEA);
	GUEST_ASSERT_EQ(ev.sea_far, NOSLOT_GPA);
	GUEST_ASSERT_EQ(ev.sea_pc, ASM_SYM(el0_load_insn));
	GUEST_ASSERT_EQ(el0_val(0), EL0_POISON);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np);
	guest_assert_quiet(1);
	GUEST_SYNC1(STAGE_STATS_END);

	guest_apf_round(0, false);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_real_sea), 1);
	GUEST_DONE();
}

static void test_real_sea_not_apf(void)
{
	uint64_t before[NR_APF_STATS], after[NR_APF_STATS];
	struct kvm_vcpu_events events;
	struct kvm_run *run;
	struct apf_vm t;
	struct ucall uc;
	int i;

	abi_watchdog();
	apf_vm_create(&t, guest_real_sea);
	virt_pg_map(t.vm, NOSLOT_GPA, NOSLOT_GPA);
	mark_el0_accessible(t.vm, NOSLOT_GPA, t.vm->page_size);
	params.real_sea_ok = true;
	sync_global_to_guest(t.vm, params);
	apf_vm_start_pager(&t);
	pager_release(0, 1);
	run = t.vcpu->run;

	run_to_stage(t.vcpu, STAGE_STATS_BASE, &uc);
	read_apf_stats(t.vcpu, before);

	vcpu_run(t.vcpu);
	TEST_ASSERT(run->exit_reason == KVM_EXIT_MMIO &&
		    run->mmio.phys_addr == NOSLOT_GPA && !run->mmio.is_write,
		    "Expected a read of 0x%llx, got exit %s (addr 0x%llx)",
		    NOSLOT_GPA, exit_reason_str(run->exit_reason),
		    run->mmio.phys_addr);
	memset(&events, 0, sizeof(events));
	events.exception.ext_dabt_pending = 1;
	vcpu_events_set(t.vcpu, &events);

	run_to_stage(t.vcpu, STAGE_STATS_END, &uc);
	read_apf_stats(t.vcpu, after);
	for (i = 0; i < NR_APF_STATS; i++)
		TEST_ASSERT(after[i] == before[i], "%s moved from %lu to %lu",
			    apf_stat_names[i], before[i], after[i]);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 26. no_vgic: without an in-kernel vGIC there is no APF
 *
 * PAGE_READY needs a PPI. Asserted: setting the BLOCK attribute fails
 * with ENODEV and GET returns 0; the guest's ENABLE returns NOT_SUPPORTED
 * and registers nothing; an EL0 fault on a missing userfaultfd page is
 * resolved synchronously (the guest reads its data, no abort) and counted
 * in apf_sync_disabled, and no other apf_* statistic moves.
 * ---------------------------------------------------------------------
 */
static void guest_no_vgic(void)
{
	GUEST_ASSERT(guest_setup_opt(false));
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ENABLE, params.block_gpa[0],
				 KVM_ASYNC_PF_ENABLED), SMCCC_RET_NOT_SUPPORTED);
	GUEST_CHECK_BLOCK(0);
	GUEST_SYNC1(STAGE_STATS_BASE);

	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(0));
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 0);
	GUEST_SYNC1(STAGE_STATS_END);
	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

static void test_no_vgic(void)
{
	uint64_t before[NR_APF_STATS], after[NR_APF_STATS];
	struct apf_vm t;
	struct ucall uc;
	int i;

	abi_watchdog();
	apf_vm_create_flags(&t, guest_no_vgic, 1, APF_VM_OFFER | APF_VM_NO_VGIC);
	apf_vm_start_pager(&t);
	pager_release(0, 1);

	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			params.block_gpa[0] | KVM_ASYNC_PF_ENABLED, ENODEV);
	check_apf_attrs(t.vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);

	run_to_stage_checking(t.vcpu, STAGE_STATS_BASE, &uc);
	read_apf_stats(t.vcpu, before);
	run_to_stage(t.vcpu, STAGE_STATS_END, &uc);
	read_apf_stats(t.vcpu, after);
	run_to_done(t.vcpu);

	TEST_ASSERT(pager_state(0).served, "The EL0 access did not fetch the page");
	for (i = 0; i < NR_APF_STATS; i++)
		TEST_ASSERT(after[i] - before[i] == (i == APF_STAT_SYNC_DISABLED),
			    "%s went up by %lu", apf_stat_names[i],
			    after[i] - before[i]);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 27. iabt: PAGE_NOT_PRESENT for an instruction fetch
 *
 * Guest EL0 branches to a test page that the pager has not served yet.
 * Asserted: PAGE_NOT_PRESENT comes as an instruction abort from a lower
 * EL (EC 0x20, FSC 0x10) with FAR and ELR the page's address and a valid
 * token, the code did not run; PAGE_READY follows for the token once the
 * pager serves the page with code (movz x1, #IABT_MAGIC; str x1, [x0];
 * ret), and the retry runs that code, with no other PAGE_NOT_PRESENT. The
 * page is requested from the pager once.
 * ---------------------------------------------------------------------
 */
#define IABT_PAGE		0
#define IABT_MAGIC		0x1ab7

static struct {
	uint32_t nr;
	uint64_t esr, far, elr;
} iabt_seen;

/* Like guest_el0_abort_handler(), for instruction aborts from EL0 */
static void guest_el0_iabt_handler(struct ex_regs *regs)
{
	uint64_t esr = read_sysreg(esr_el1);
	uint64_t far = read_sysreg(far_el1);
	uint32_t reason, token, n;

	__GUEST_ASSERT(apf_block, "Instruction abort from EL0, FAR 0x%lx", far);
	reason = READ_ONCE(apf_block->reason);
	dmb(ishld);
	token = READ_ONCE(apf_block->token);
	__GUEST_ASSERT(reason == KVM_PV_REASON_PAGE_NOT_PRESENT,
		       "Instruction abort from EL0 with reason %u, ESR 0x%lx FAR 0x%lx",
		       reason, esr, far);

	iabt_seen.esr = esr;
	iabt_seen.far = far;
	iabt_seen.elr = regs->pc;
	iabt_seen.nr++;

	n = ev.nr_not_present;
	GUEST_ASSERT(n < MAX_EVENTS);
	ev.np_token[n] = token;
	ev.np_addr[n] = far;
	WRITE_ONCE(ev.nr_not_present, n + 1);
	WRITE_ONCE(apf_block->reason, 0);

	/* Nothing ran: back to the caller, the trampoline's SVC. */
	regs->pc = regs->regs[30];
}

static void guest_iabt(void)
{
	struct el0_args *args = (void *)params.el0_args;
	uint64_t code = test_page(IABT_PAGE);
	uint32_t token;

	guest_setup();
	guest_enable(0);

	args->val[0] = 0;
	run_at_el0(code, (uint64_t)&args->val[0], params.el0_sp);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	GUEST_ASSERT_EQ(iabt_seen.nr, 1);
	GUEST_ASSERT_EQ(ESR_EC_OF(iabt_seen.esr), ESR_EC_IABT_LOW);
	GUEST_ASSERT_EQ(iabt_seen.esr & ESR_FSC_MASK, ESR_FSC_SEA);
	GUEST_ASSERT_EQ(iabt_seen.far, code);
	GUEST_ASSERT_EQ(iabt_seen.elr, code);
	GUEST_ASSERT_EQ(args->val[0], 0);
	token = ev.np_token[0];
	__GUEST_ASSERT(token_valid(token), "Bad token 0x%x", token);
	GUEST_SYNC2(STAGE_NOT_PRESENT, token);

	guest_wait_ready(2);
	GUEST_ASSERT_EQ(ev.ready_token[1], token);

	run_at_el0(code, (uint64_t)&args->val[0], params.el0_sp);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	GUEST_ASSERT_EQ(args->val[0], IABT_MAGIC);
	GUEST_DONE();
}

static void test_iabt(void)
{
	const uint32_t insns[] = {
		0xd2800001 | IABT_MAGIC << 5,	/* movz x1, #IABT_MAGIC */
		0xf9000001,			/* str x1, [x0] */
		0xd65f03c0,			/* ret */
	};
	struct apf_vm t;
	struct ucall uc;

	abi_watchdog();
	apf_vm_create(&t, guest_iabt);
	vm_install_sync_handler(t.vm, VECTOR_SYNC_LOWER_64, ESR_EC_IABT_LOW,
				guest_el0_iabt_handler);
	apf_vm_start_pager(&t);

	run_to_stage(t.vcpu, STAGE_NOT_PRESENT, &uc);
	pager_wait_requests(IABT_PAGE, 1);
	pager_serve_data(IABT_PAGE, insns, sizeof(insns));
	run_to_done(t.vcpu);
	TEST_ASSERT_EQ(pager_state(IABT_PAGE).nr_requests, 1);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 28. multi_vcpu: two vCPUs, two blocks, faults in flight at once
 *
 * vCPUs 0 and 1 each register a block of their own and fault at EL0 on
 * test page 0 and 1 respectively; both fetches wait in userfaultfd until
 * both faults are in flight. The handlers record each event under the
 * vCPU they run on. Asserted: each vCPU gets its PAGE_NOT_PRESENT (its
 * page, a valid token) and then the PAGE_READY of that token, and nothing
 * else but its wake-all; the two tokens differ; each vCPU's retry reads
 * its page; each vCPU's apf_not_present and apf_ready equal the events
 * that vCPU saw.
 * ---------------------------------------------------------------------
 */
#define MV_NR_VCPUS		2
#define MV_MAX_EVENTS		4

static struct kvm_vcpu_pv_apf_data *mv_block[MV_NR_VCPUS];
static uint64_t mv_el0_args[MV_NR_VCPUS];	/* set by the host */

/* Events, as recorded by the handlers, by the vCPU they ran on */
static struct mv_events {
	uint32_t nr_np, nr_ready;
	uint32_t np_token[MV_MAX_EVENTS], ready_token[MV_MAX_EVENTS];
	uint64_t np_addr[MV_MAX_EVENTS];
	uint32_t np_cpu[MV_MAX_EVENTS], ready_cpu[MV_MAX_EVENTS];
} mv_ev[MV_NR_VCPUS];

static void guest_mv_abort_handler(struct ex_regs *regs)
{
	uint32_t cpu = guest_get_vcpuid();
	struct kvm_vcpu_pv_apf_data *blk = mv_block[cpu];
	struct mv_events *e = &mv_ev[cpu];
	uint32_t reason, token, n = e->nr_np;

	GUEST_ASSERT(blk && n < MV_MAX_EVENTS);
	reason = READ_ONCE(blk->reason);
	dmb(ishld);
	token = READ_ONCE(blk->token);
	__GUEST_ASSERT(reason == KVM_PV_REASON_PAGE_NOT_PRESENT &&
		       regs->pc == ASM_SYM(el0_load_insn),
		       "vCPU %u: abort with reason %u at PC 0x%lx", cpu, reason,
		       regs->pc);

	e->np_token[n] = token;
	e->np_addr[n] = read_sysreg(far_el1);
	e->np_cpu[n] = cpu;
	WRITE_ONCE(e->nr_np, n + 1);
	WRITE_ONCE(blk->reason, 0);

	regs->regs[EL0_VAL_REG] = EL0_POISON;
	regs->pc += 4;
}

static void guest_mv_irq_handler(struct ex_regs *regs)
{
	uint32_t intid = gic_get_and_ack_irq();
	uint32_t cpu = guest_get_vcpuid();
	struct kvm_vcpu_pv_apf_data *blk = mv_block[cpu];
	struct mv_events *e = &mv_ev[cpu];
	uint32_t reason, token, n = e->nr_ready;

	if (intid == IAR_SPURIOUS)
		return;
	__GUEST_ASSERT(intid == apf_irq && blk, "vCPU %u: interrupt %u", cpu,
		       intid);
	reason = READ_ONCE(blk->reason);
	dmb(ishld);
	token = READ_ONCE(blk->token);
	__GUEST_ASSERT(reason == KVM_PV_REASON_PAGE_READY && n < MV_MAX_EVENTS,
		       "vCPU %u: PPI with reason %u", cpu, reason);

	e->ready_token[n] = token;
	e->ready_cpu[n] = cpu;
	WRITE_ONCE(e->nr_ready, n + 1);
	WRITE_ONCE(blk->reason, 0);

	dmb(ish);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ACK, 0, 0), SMCCC_RET_SUCCESS);
	gic_set_eoi(intid);
}

static void guest_mv_wait_ready(struct mv_events *e, uint32_t nr_ready)
{
	while (READ_ONCE(e->nr_ready) < nr_ready) {
		wfi();
		guest_irq_window();
	}
}

static void guest_multi_vcpu(void)
{
	uint32_t cpu = guest_get_vcpuid();
	struct el0_args *args = (void *)mv_el0_args[cpu];
	uint64_t blk = params.block_gpa[cpu];
	struct mv_events *e = &mv_ev[cpu];
	uint32_t token;

	guest_setup();
	memset((void *)blk, 0, sizeof(struct kvm_vcpu_pv_apf_data));
	WRITE_ONCE(mv_block[cpu], (void *)blk);
	GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_ENABLE, blk, KVM_ASYNC_PF_ENABLED),
			SMCCC_RET_SUCCESS);
	guest_mv_wait_ready(e, 1);
	GUEST_ASSERT_EQ(e->ready_token[0], KVM_ASYNC_PF_WAKE_ALL_TOKEN);

	guest_el0_access_at(args, test_page(cpu), false, 0);
	GUEST_ASSERT_EQ(READ_ONCE(e->nr_np), 1);
	GUEST_ASSERT_EQ(e->np_addr[0], test_page(cpu));
	GUEST_ASSERT_EQ(args->val[0], EL0_POISON);
	token = e->np_token[0];
	__GUEST_ASSERT(token_valid(token), "Bad token 0x%x", token);
	GUEST_SYNC2(STAGE_NOT_PRESENT, token);

	guest_mv_wait_ready(e, 2);
	GUEST_ASSERT_EQ(e->ready_token[1], token);

	guest_el0_access_at(args, test_page(cpu), false, 0);
	GUEST_ASSERT_EQ(READ_ONCE(e->nr_np), 1);
	GUEST_ASSERT_EQ(args->val[0], page_pattern(cpu));
	GUEST_SYNC1(STAGE_STATS_END);
	GUEST_DONE();
}

static struct {
	struct apf_vm *t;
	pthread_barrier_t in_flight;	/* both fetches wait in uffd */
	pthread_barrier_t released;
	uint32_t token[MV_NR_VCPUS];
	uint64_t stats[MV_NR_VCPUS][NR_APF_STATS];
} mv_host;

static void *mv_vcpu_thread(void *arg)
{
	uint32_t idx = (uintptr_t)arg;
	struct kvm_vcpu *vcpu = mv_host.t->vcpus[idx];
	struct ucall uc;

	run_to_stage(vcpu, STAGE_NOT_PRESENT, &uc);
	mv_host.token[idx] = uc.args[1];
	pager_wait_requests(idx, 1);

	pthread_barrier_wait(&mv_host.in_flight);
	if (!idx)
		pager_release(0, MV_NR_VCPUS);
	pthread_barrier_wait(&mv_host.released);

	run_to_stage(vcpu, STAGE_STATS_END, &uc);
	read_apf_stats(vcpu, mv_host.stats[idx]);
	run_to_done(vcpu);
	return NULL;
}

static void test_multi_vcpu(void)
{
	pthread_t threads[MV_NR_VCPUS];
	struct mv_events *e;
	struct apf_vm t;
	uint64_t gva;
	uint32_t i, j;

	abi_watchdog();
	__apf_vm_create(&t, guest_multi_vcpu, MV_NR_VCPUS, true);
	vm_install_sync_handler(t.vm, VECTOR_SYNC_LOWER_64, ESR_EC_DABT_LOW,
				guest_mv_abort_handler);
	vm_install_exception_handler(t.vm, VECTOR_IRQ_CURRENT, guest_mv_irq_handler);

	/* vCPU 1 needs EL0 data of its own. */
	gva = vm_vaddr_alloc(t.vm, t.vm->page_size, KVM_UTIL_MIN_VADDR);
	mark_el0_accessible(t.vm, gva, t.vm->page_size);
	mv_el0_args[0] = params.el0_args;
	mv_el0_args[1] = gva;
	sync_global_to_guest(t.vm, mv_el0_args);
	apf_vm_start_pager(&t);

	mv_host.t = &t;
	pthread_barrier_init(&mv_host.in_flight, NULL, MV_NR_VCPUS);
	pthread_barrier_init(&mv_host.released, NULL, MV_NR_VCPUS);
	for (i = 0; i < MV_NR_VCPUS; i++)
		pthread_create(&threads[i], NULL, mv_vcpu_thread,
			       (void *)(uintptr_t)i);
	for (i = 0; i < MV_NR_VCPUS; i++)
		pthread_join(threads[i], NULL);

	sync_global_from_guest(t.vm, mv_ev);
	TEST_ASSERT(mv_host.token[0] != mv_host.token[1],
		    "Both vCPUs got token 0x%x", mv_host.token[0]);
	for (i = 0; i < MV_NR_VCPUS; i++) {
		e = &mv_ev[i];
		TEST_ASSERT(e->nr_np == 1 && e->nr_ready == 2,
			    "vCPU %u saw %u PAGE_NOT_PRESENT, %u PAGE_READY",
			    i, e->nr_np, e->nr_ready);
		TEST_ASSERT(e->np_cpu[0] == i && e->np_token[0] == mv_host.token[i],
			    "vCPU %u: PAGE_NOT_PRESENT 0x%x on vCPU %u",
			    i, e->np_token[0], e->np_cpu[0]);
		for (j = 0; j < e->nr_ready; j++)
			TEST_ASSERT(e->ready_cpu[j] == i,
				    "vCPU %u: PAGE_READY 0x%x on vCPU %u",
				    i, e->ready_token[j], e->ready_cpu[j]);
		TEST_ASSERT_EQ(e->ready_token[1], mv_host.token[i]);
		TEST_ASSERT_EQ(mv_host.stats[i][APF_STAT_NOT_PRESENT], e->nr_np);
		TEST_ASSERT_EQ(mv_host.stats[i][APF_STAT_READY], e->nr_ready);
	}
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 29. memslot_delete_in_flight
 *
 * With the fetch of test page 0 waiting in userfaultfd, the VMM deletes
 * the memslot of the page (in KVM only: its mapping and the pager stay)
 * and serves the page, which ends the fetch. apf.rst says nothing of this
 * case; what is asserted is the safe behaviour observed: the guest gets
 * exactly one PAGE_READY, for the token or a wake-all, in its block; the
 * host wrote nothing else (the rest of the block's page and the other
 * block's page keep a canary, the served page its pattern); the vCPU runs
 * on, and once the memslot is back the page reads fine and a new APF
 * round trip works.
 * ---------------------------------------------------------------------
 */
static void guest_memslot_delete(void)
{
	uint32_t token, i;

	guest_setup();
	guest_enable(0);

	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	token = ev.np_token[0];
	GUEST_SYNC2(STAGE_NOT_PRESENT, token);

	/* The memslot is gone, the page is in: the fetch is over. */
	guest_wait_ready(2);
	__GUEST_ASSERT(ev.ready_token[1] == token ||
		       ev.ready_token[1] == KVM_ASYNC_PF_WAKE_ALL_TOKEN,
		       "PAGE_READY for token 0x%x, expected 0x%x",
		       ev.ready_token[1], token);
	for (i = 0; i < sizeof(apf_block->pad); i++)
		GUEST_ASSERT_EQ(apf_block->pad[i], 0);
	GUEST_SYNC1(STAGE_RUNNING);

	/* The memslot is back. */
	guest_assert_quiet(2);
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(0));
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	guest_apf_round(1, false);
	GUEST_DONE();
}

static void test_memslot_delete_in_flight(void)
{
	uint64_t stride, nr_bad = 0, nr_written = 0, i;
	struct userspace_mem_region *r;
	struct apf_vm t;
	struct ucall uc;
	uint64_t *page;

	abi_watchdog();
	apf_vm_create(&t, guest_memslot_delete);
	stride = params.stride;
	apf_vm_start_pager(&t);
	pager_release(1, 1);
	fuzz_canary_fill(t.vm, params.block_gpa[0] + KVM_ASYNC_PF_BLOCK_ALIGN,
			 stride - KVM_ASYNC_PF_BLOCK_ALIGN);
	fuzz_canary_fill(t.vm, params.block_gpa[1], stride);
	r = memslot2region(t.vm, TEST_SLOT);

	run_to_stage(t.vcpu, STAGE_NOT_PRESENT, &uc);
	pager_wait_requests(0, 1);
	vm_set_user_memory_region(t.vm, TEST_SLOT, 0, TEST_GPA, 0, NULL);
	pager_release(0, 1);

	run_to_stage(t.vcpu, STAGE_RUNNING, &uc);
	sync_global_from_guest(t.vm, ev);
	ksft_print_msg("memslot_delete_in_flight: PAGE_READY 0x%x for token 0x%x\n",
		       ev.ready_token[1], ev.np_token[0]);
	nr_bad += fuzz_canary_check(t.vm, params.block_gpa[0] + KVM_ASYNC_PF_BLOCK_ALIGN,
				    stride - KVM_ASYNC_PF_BLOCK_ALIGN, &nr_written);
	nr_bad += fuzz_canary_check(t.vm, params.block_gpa[1], stride, &nr_written);
	TEST_ASSERT(!nr_bad, "%lu bytes of guest memory changed", nr_bad);
	page = (uint64_t *)pager.hva;
	for (i = 0; i < stride / sizeof(uint64_t); i++)
		TEST_ASSERT(page[i] == page_pattern(0),
			    "Test page 0 changed at word %lu: 0x%lx", i, page[i]);

	vm_set_user_memory_region(t.vm, TEST_SLOT, r->region.flags, TEST_GPA,
				  r->region.memory_size, r->host_mem);
	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 30. psci_cpu_on_reset: CPU_OFF with a fault in flight, then CPU_ON
 *
 * vCPU 1 registers its block, takes PAGE_NOT_PRESENT for test page 0,
 * whose fetch waits in userfaultfd, and turns itself off with PSCI
 * CPU_OFF; vCPU 0 turns it on again with CPU_ON. vCPU 1 starts at an entry
 * point that, with the MMU off, stores to an IPA with no memslot: the VMM
 * sees it there, puts its MMU back and lets it run C code again, and only
 * then serves the page. Asserted: the CPU_ON reset happens while the
 * fetch is stalled (it does not wait for it); after it the BLOCK attribute
 * reads 0 and the IRQ attribute keeps its value; once the page is served
 * and vCPU 1 ran again, its old block is exactly as it left it, and
 * neither apf_not_present nor apf_ready of vCPU 1 moved.
 * ---------------------------------------------------------------------
 */
static struct {
	uint64_t target;	/* vCPU 1's MPIDR */
	uint64_t entry;		/* IPA of psci_entry */
} psci_cfg;

static struct kvm_vcpu_pv_apf_data psci_blk_copy;

/* CPU_ON entry point, run with the MMU off: x0 = NOSLOT_GPA */
asm("	.pushsection .text, \"ax\"\n"
"	.balign	8\n"
"	.global	psci_entry\n"
"	.type	psci_entry, %function\n"
"psci_entry:\n"
"	str	x0, [x0]\n"
"	b	.\n"
"	.size	psci_entry, . - psci_entry\n"
"	.popsection\n");

static void guest_psci(void)
{
	struct arm_smccc_res res;

	guest_setup();
	if (guest_get_vcpuid() == 0) {
		/* The host holds vCPU 0 until vCPU 1's fault is in flight. */
		GUEST_SYNC1(STAGE_RUNNING);
		do {
			smccc_hvc(PSCI_0_2_FN64_AFFINITY_INFO, psci_cfg.target,
				  0, 0, 0, 0, 0, 0, &res);
		} while (res.a0 != PSCI_0_2_AFFINITY_LEVEL_OFF);
		smccc_hvc(PSCI_0_2_FN64_CPU_ON, psci_cfg.target, psci_cfg.entry,
			  NOSLOT_GPA, 0, 0, 0, 0, &res);
		GUEST_ASSERT_EQ(res.a0, PSCI_RET_SUCCESS);
		GUEST_DONE();
	}

	guest_enable(1);
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	GUEST_SYNC2(STAGE_NOT_PRESENT, ev.np_token[0]);

	snapshot_block(&psci_blk_copy, apf_block);
	smccc_hvc(PSCI_0_2_FN_CPU_OFF, 0, 0, 0, 0, 0, 0, 0, &res);
	GUEST_FAIL("CPU_OFF returned %ld", (long)res.a0);
}

/* vCPU 1 after CPU_ON, once the host has set it up again */
static void guest_psci_after_on(void)
{
	struct kvm_vcpu_pv_apf_data *blk = (void *)params.block_gpa[1];
	int i;

	/* The host serves the page now: the old fetch ends. */
	GUEST_SYNC1(STAGE_RUNNING);
	for (i = 0; i < 3; i++)
		GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_VERSION, 0, 0),
				SMCCC_RET_SUCCESS);
	assert_block_unchanged(&psci_blk_copy, blk);
	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

/* What vCPU 1 needs to run C code again after its reset */
static const uint64_t psci_sysregs[] = {
	KVM_ARM64_SYS_REG(SYS_SCTLR_EL1), KVM_ARM64_SYS_REG(SYS_TCR_EL1),
	KVM_ARM64_SYS_REG(SYS_MAIR_EL1), KVM_ARM64_SYS_REG(SYS_TTBR0_EL1),
	KVM_ARM64_SYS_REG(SYS_CPACR_EL1), KVM_ARM64_SYS_REG(SYS_TPIDR_EL1),
	KVM_ARM64_SYS_REG(SYS_VBAR_EL1),
};

static struct {
	struct apf_vm *t;
	pthread_barrier_t in_flight;	/* vCPU 1's fetch waits in uffd */
	uint64_t sysregs[ARRAY_SIZE(psci_sysregs)];
} psci_host;

static void *psci_vcpu0_thread(void *arg)
{
	struct kvm_vcpu *vcpu = psci_host.t->vcpus[0];
	struct ucall uc;

	run_to_stage(vcpu, STAGE_RUNNING, &uc);
	pthread_barrier_wait(&psci_host.in_flight);
	run_to_done(vcpu);
	return NULL;
}

static void *psci_vcpu1_thread(void *arg)
{
	uint64_t before[NR_APF_STATS], after[NR_APF_STATS], val, stack;
	struct kvm_vcpu *vcpu = psci_host.t->vcpus[1];
	struct kvm_vm *vm = psci_host.t->vm;
	struct kvm_run *run = vcpu->run;
	struct ucall uc;
	unsigned int i;

	run_to_stage(vcpu, STAGE_NOT_PRESENT, &uc);
	pager_wait_requests(0, 1);
	read_apf_stats(vcpu, before);
	pthread_barrier_wait(&psci_host.in_flight);

	/* CPU_OFF, CPU_ON from vCPU 0, the reset, then psci_entry */
	vcpu_run(vcpu);
	if (get_ucall(vcpu, &uc) == UCALL_ABORT)
		REPORT_GUEST_ASSERT(uc);
	TEST_ASSERT(run->exit_reason == KVM_EXIT_MMIO &&
		    run->mmio.phys_addr == NOSLOT_GPA && run->mmio.is_write,
		    "vCPU 1 did not reach psci_entry: exit %s",
		    exit_reason_str(run->exit_reason));
	vcpu_get_reg(vcpu, ARM64_CORE_REG(regs.pc), &val);
	TEST_ASSERT_EQ(val, psci_cfg.entry);
	check_apf_attrs(vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);

	/* Back to C code with the MMU on, on a fresh stack */
	vcpu_run_complete_io(vcpu);
	for (i = 0; i < ARRAY_SIZE(psci_sysregs); i++)
		vcpu_set_reg(vcpu, psci_sysregs[i], psci_host.sysregs[i]);
	stack = vm_vaddr_alloc(vm, 4 * vm->page_size, KVM_UTIL_MIN_VADDR);
	vcpu_set_reg(vcpu, ARM64_CORE_REG(sp_el1), stack + 4 * vm->page_size);
	vcpu_set_reg(vcpu, ARM64_CORE_REG(regs.pc), (uint64_t)guest_psci_after_on);
	run_to_stage(vcpu, STAGE_RUNNING, &uc);

	pager_release(0, 1);
	apf_settle();
	run_to_done(vcpu);

	read_apf_stats(vcpu, after);
	TEST_ASSERT_EQ(after[APF_STAT_NOT_PRESENT], before[APF_STAT_NOT_PRESENT]);
	TEST_ASSERT_EQ(after[APF_STAT_READY], before[APF_STAT_READY]);
	return NULL;
}

static void test_psci_cpu_on_reset(void)
{
	pthread_t threads[2];
	struct apf_vm t;
	unsigned int i;

	abi_watchdog();
	apf_vm_create_flags(&t, guest_psci, 2, APF_VM_OFFER | APF_VM_PSCI);
	apf_vm_start_pager(&t);

	for (i = 0; i < ARRAY_SIZE(psci_sysregs); i++)
		vcpu_get_reg(t.vcpus[1], psci_sysregs[i], &psci_host.sysregs[i]);
	vcpu_get_reg(t.vcpus[1], KVM_ARM64_SYS_REG(SYS_MPIDR_EL1), &psci_cfg.target);
	psci_cfg.target &= MPIDR_HWID_BITMASK;
	psci_cfg.entry = addr_gva2gpa(t.vm, ASM_SYM(psci_entry));
	sync_global_to_guest(t.vm, psci_cfg);

	psci_host.t = &t;
	pthread_barrier_init(&psci_host.in_flight, NULL, 2);
	pthread_create(&threads[0], NULL, psci_vcpu0_thread, NULL);
	pthread_create(&threads[1], NULL, psci_vcpu1_thread, NULL);
	for (i = 0; i < 2; i++)
		pthread_join(threads[i], NULL);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 20. nv_refused: no APF for a vCPU with a virtual EL2
 *
 * Its nested guest could reach the hypercall and make the host write into
 * the L1 guest's memory. Needs a host with nested virtualization
 * (kvm-arm.mode=nested on FEAT_NV2 hardware); skipped elsewhere.
 *
 * Asserted: on a vCPU initialized with KVM_ARM_VCPU_HAS_EL2, with APF
 * offered in BMAP_2 and the block in a writable memslot (so that nothing
 * but the virtual EL2 stands in the way), setting the BLOCK attribute
 * fails with EINVAL, and GET then returns IRQ 18 and BLOCK 0. The guest
 * side (NOT_SUPPORTED for every subcall) is not exercised.
 * ---------------------------------------------------------------------
 */
static void test_nv_refused(void)
{
	struct kvm_vcpu_init init;
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	uint64_t bmap;
	int ret;

	vm = vm_create_barebones();
	vm_ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init);
	init.features[0] |= BIT(KVM_ARM_VCPU_HAS_EL2);
	vcpu = __vm_vcpu_add(vm, 0);
	ret = __vcpu_ioctl(vcpu, KVM_ARM_VCPU_INIT, &init);
	if (ret) {
		kvm_vm_free(vm);
		ksft_print_msg("nv_refused: no nested virtualization on this host\n");
		exit(KSFT_SKIP);
	}

	vcpu_get_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	vcpu_set_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2,
		     bmap | BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF));
	/* Offered indeed: EINVAL below is not that of a hidden APF. */
	vcpu_get_reg(vcpu, KVM_REG_ARM_VENDOR_HYP_BMAP_2, &bmap);
	TEST_ASSERT(bmap & BIT_ULL(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF),
		    "APF not offered in BMAP_2 (0x%lx)", bmap);
	vm_userspace_mem_region_add(vm, VM_MEM_SRC_ANONYMOUS, BLOCK_GPA,
				    BLOCK_SLOT, 1, 0);
	assert_apf_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_BLOCK,
			BLOCK_GPA | KVM_ASYNC_PF_ENABLED, EINVAL);
	check_apf_attrs(vcpu, KVM_ASYNC_PF_DEFAULT_IRQ, 0);
	kvm_vm_free(vm);
}

/* ---------------------------------------------------------------------
 * 31. ppi_collision: the IRQ attribute is checked and the PPI claimed
 *
 * Asserted: SET of the IRQ attribute refuses the VM's timer PPIs and the
 * vCPU's PMU PPI with EBUSY, and an INTID that differs from the one another
 * vCPU has with EINVAL, and then GET still reads the old value. The first
 * KVM_RUN fails with EINVAL while only some vCPUs have the VMM's INTID, and
 * with EBUSY when the VMM moved a timer onto it after setting it. With a
 * valid choice the guest reads it from the IRQ subcall and takes the
 * wake-all and a PAGE_READY on it, and the VMM's own KVM_IRQ_LINE on that
 * PPI does not reach the guest: KVM claimed it in the vGIC.
 * ---------------------------------------------------------------------
 */
#define PPI_CHOICE		20
#define PPI_PMU			23

static void guest_ppi(void)
{
	guest_setup();
	guest_enable(0);
	GUEST_SYNC1(STAGE_RUNNING);
	/* The VMM raised PPI_CHOICE with KVM_IRQ_LINE: nothing arrives. */
	guest_assert_quiet(1);
	guest_apf_round(0, false);
	GUEST_DONE();
}

static void assert_first_run_fails(struct kvm_vcpu *vcpu, int err)
{
	int ret = _vcpu_run(vcpu);

	TEST_ASSERT(ret && errno == err,
		    "First KVM_RUN: ret %d errno %d, expected errno %d",
		    ret, errno, err);
}

static uint32_t timer_ppi(struct kvm_vcpu *vcpu, uint64_t attr)
{
	uint32_t irq;

	vcpu_device_attr_get(vcpu, KVM_ARM_VCPU_TIMER_CTRL, attr, &irq);
	return irq;
}

static void test_ppi_collision(void)
{
	const uint32_t def = KVM_ASYNC_PF_DEFAULT_IRQ;
	uint32_t vtimer, ptimer, pmu_irq = PPI_PMU;
	struct apf_vm t;
	struct ucall uc;
	uint64_t stats[NR_APF_STATS];

	abi_watchdog();

	/* Timers, different INTIDs, and the claim, on a VM of 2 vCPUs. */
	__apf_vm_create(&t, guest_ppi, 2, true);
	vtimer = timer_ppi(t.vcpu, KVM_ARM_VCPU_TIMER_IRQ_VTIMER);
	ptimer = timer_ppi(t.vcpu, KVM_ARM_VCPU_TIMER_IRQ_PTIMER);
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, vtimer, EBUSY);
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, ptimer, EBUSY);
	check_apf_attrs(t.vcpu, def, 0);

	assert_apf_attr(t.vcpus[0], KVM_ARM_VCPU_ASYNC_PF_IRQ, PPI_CHOICE, 0);
	assert_apf_attr(t.vcpus[1], KVM_ARM_VCPU_ASYNC_PF_IRQ, PPI_CHOICE + 1, EINVAL);
	check_apf_attrs(t.vcpus[1], def, 0);
	/* vCPU 1 still has the default: the VM cannot run. */
	assert_first_run_fails(t.vcpus[0], EINVAL);

	assert_apf_attr(t.vcpus[1], KVM_ARM_VCPU_ASYNC_PF_IRQ, PPI_CHOICE, 0);
	params.expected_irq = PPI_CHOICE;
	sync_global_to_guest(t.vm, params);
	apf_vm_start_pager(&t);
	pager_release(0, 1);
	run_to_stage(t.vcpu, STAGE_RUNNING, &uc);
	kvm_arm_irq_line(t.vm, PPI_CHOICE, 1);
	run_to_done(t.vcpu);
	kvm_arm_irq_line(t.vm, PPI_CHOICE, 0);
	read_apf_stats(t.vcpu, stats);
	TEST_ASSERT(stats[APF_STAT_NOT_PRESENT] == 1 && stats[APF_STAT_READY] == 2,
		    "apf_not_present %lu apf_ready %lu, expected 1 and 2",
		    stats[APF_STAT_NOT_PRESENT], stats[APF_STAT_READY]);
	apf_vm_destroy(&t);

	/* A timer moved onto the APF PPI after the VMM chose it. */
	__apf_vm_create(&t, guest_ppi, 1, true);
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, PPI_CHOICE, 0);
	vtimer = PPI_CHOICE;
	vcpu_device_attr_set(t.vcpu, KVM_ARM_VCPU_TIMER_CTRL,
			     KVM_ARM_VCPU_TIMER_IRQ_VTIMER, &vtimer);
	assert_first_run_fails(t.vcpu, EBUSY);
	apf_vm_destroy(&t);

	/* The PMU's PPI. */
	if (!kvm_has_cap(KVM_CAP_ARM_PMU_V3)) {
		ksft_print_msg("ppi_collision: no PMU for guests, PMU case skipped\n");
		return;
	}
	apf_vm_create_flags(&t, guest_ppi, 1, APF_VM_OFFER | APF_VM_PMU);
	vcpu_device_attr_set(t.vcpu, KVM_ARM_VCPU_PMU_V3_CTRL,
			     KVM_ARM_VCPU_PMU_V3_IRQ, &pmu_irq);
	assert_apf_attr(t.vcpu, KVM_ARM_VCPU_ASYNC_PF_IRQ, PPI_PMU, EBUSY);
	check_apf_attrs(t.vcpu, def, 0);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 32. ready_kept_block_unwritable: no PAGE_READY is lost to a block that
 * cannot be accessed for a while
 *
 * The VMM makes the page of the control block read-only in its own
 * mapping (so KVM reads the block but cannot write it), and later
 * inaccessible (KVM cannot even read it), each time while a fetch is in
 * flight, and serves the page. Asserted: while the block is out of reach
 * nothing is delivered, in 20 guest entries (apf_ready and the guest's
 * count stay put); once the VMM gives write access back, the guest gets
 * PAGE_READY with the token of its PAGE_NOT_PRESENT, reads the page's data
 * on the retry without another PAGE_NOT_PRESENT, and apf_ready counts
 * exactly the events the guest took.
 * ---------------------------------------------------------------------
 */
#define UNW_POLLS		20

static void guest_unwritable_round(uint32_t page)
{
	uint32_t np = READ_ONCE(ev.nr_not_present);
	uint32_t ready = READ_ONCE(ev.nr_ready);
	uint32_t token;

	guest_el0_read(page, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
	token = ev.np_token[np];
	GUEST_SYNC2(STAGE_NOT_PRESENT, token);

	/* Poll without touching the block, which may be out of reach. */
	while (READ_ONCE(ev.nr_ready) == ready) {
		guest_irq_window();
		GUEST_SYNC2(STAGE_PENDING, READ_ONCE(ev.nr_ready));
	}
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_ready), ready + 1);
	GUEST_ASSERT_EQ(ev.ready_token[ready], token);

	guest_el0_read(page, 1);
	GUEST_ASSERT_EQ(el0_val(0), page_pattern(page));
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 1);
}

static void guest_unwritable(void)
{
	guest_setup();
	guest_enable(0);
	guest_unwritable_round(0);
	guest_unwritable_round(1);
	GUEST_DONE();
}

/*
 * Called with the guest stopped at STAGE_NOT_PRESENT for @page; returns
 * the stage it reaches once PAGE_READY came and it retried.
 */
static uint64_t unwritable_round(struct apf_vm *t, uint32_t page, int prot,
				 uint32_t nr_ready)
{
	void *blk = addr_gpa2hva(t->vm, params.block_gpa[0]);
	uint64_t stats[NR_APF_STATS];
	struct ucall uc;
	uint64_t stage;
	int i;

	TEST_ASSERT(!mprotect(blk, params.stride, prot),
		    "mprotect() failed, errno %d", errno);
	pager_wait_requests(page, 1);
	pager_release(page, 1);
	apf_settle();

	for (i = 0; i < UNW_POLLS; i++) {
		run_to_stage(t->vcpu, STAGE_PENDING, &uc);
		TEST_ASSERT(uc.args[1] == nr_ready,
			    "Guest took %lu events with its block out of reach, expected %u",
			    uc.args[1], nr_ready);
	}
	read_apf_stats(t->vcpu, stats);
	TEST_ASSERT(stats[APF_STAT_READY] == nr_ready,
		    "apf_ready %lu with the block out of reach, expected %u",
		    stats[APF_STAT_READY], nr_ready);

	TEST_ASSERT(!mprotect(blk, params.stride, PROT_READ | PROT_WRITE),
		    "mprotect() failed, errno %d", errno);
	for (i = 0; i < 10 * UNW_POLLS; i++) {
		stage = run_vcpu(t->vcpu, &uc);
		if (stage != STAGE_PENDING)
			break;
	}
	TEST_ASSERT(stage != STAGE_PENDING,
		    "Guest still waits for PAGE_READY after %d entries", i);
	read_apf_stats(t->vcpu, stats);
	TEST_ASSERT(stats[APF_STAT_READY] == nr_ready + 1,
		    "apf_ready %lu, expected %u", stats[APF_STAT_READY],
		    nr_ready + 1);
	ksft_print_msg("ready_kept_block_unwritable: %s block: PAGE_READY %d %s\n",
		       prot == PROT_READ ? "read-only" : "inaccessible", i,
		       "entries after write access came back");
	return stage;
}

static void test_ready_kept_block_unwritable(void)
{
	uint64_t stats[NR_APF_STATS];
	struct apf_vm t;
	struct ucall uc;

	abi_watchdog();
	apf_vm_create(&t, guest_unwritable);
	apf_vm_start_pager(&t);

	run_to_stage(t.vcpu, STAGE_NOT_PRESENT, &uc);
	/* KVM reads the block, its write of PAGE_READY fails: kept. */
	TEST_ASSERT(unwritable_round(&t, 0, PROT_READ, 1) == STAGE_NOT_PRESENT,
		    "Guest did not go on to its second fault");
	/* KVM cannot even read it: the completion stays queued. */
	TEST_ASSERT(unwritable_round(&t, 1, PROT_NONE, 2) == STAGE_DONE,
		    "Guest did not finish");

	read_apf_stats(t.vcpu, stats);
	TEST_ASSERT(stats[APF_STAT_NOT_PRESENT] == 2 && stats[APF_STAT_READY] == 3,
		    "apf_not_present %lu apf_ready %lu, expected 2 and 3",
		    stats[APF_STAT_NOT_PRESENT], stats[APF_STAT_READY]);
	apf_vm_destroy(&t);
}

static const struct {
	const char *name;
	void (*run)(void);
	bool needs_uffd;
} subtests[] = {
	{ "discovery",				test_discovery,		false },
	{ "hidden by the VMM",			test_hidden,		false },
	{ "single page",			test_single_page,	true },
	{ "all slots in use, then one more",	test_many_pages,	true },
	{ "EL1 access is synchronous",		test_el1_access,	true },
	{ "disable with faults pending",	test_disable_pending,	true },
	{ "enable queues one wake-all",		test_reenable,		true },
	{ "ack with nothing pending",		test_ack_idle,		true },
	{ "invalid input",			test_bad_input,		true },
	{ "migration attributes",		test_migration,		true },
	{ "statistics",				test_stats,		true },
	{ "vCPU reset with a fault in flight",	test_reset,		true },
	{ "kill_uffd_low_fd",			test_kill_uffd_low_fd,	true },
	{ "kill_in_disable",			test_kill_in_disable,	true },
	{ "close_kvm_before_uffd",		test_close_kvm_before_uffd, true },
	{ "default_hidden",			test_default_hidden,	false },
	{ "hide_after_restore",			test_hide_after_restore, false },
	{ "attr_high_bits",			test_attr_high_bits,	false },
	{ "stale_ack_after_restore",		test_stale_ack_after_restore, true },
	{ "nv_refused",				test_nv_refused,	false },
	{ "fuzz",				test_fuzz,		true },
	{ "teardown_loop",			test_teardown_loop,	true },
	{ "readonly_forward_progress",		test_readonly_forward_progress, true },
	{ "fetch_error_forward_progress",	test_fetch_error_forward_progress, false },
	{ "real_sea_not_apf",			test_real_sea_not_apf,	true },
	{ "no_vgic",				test_no_vgic,		true },
	{ "iabt",				test_iabt,		true },
	{ "multi_vcpu",				test_multi_vcpu,	true },
	{ "memslot_delete_in_flight",		test_memslot_delete_in_flight, true },
	{ "psci_cpu_on_reset",			test_psci_cpu_on_reset,	true },
	{ "ppi_collision",			test_ppi_collision,	true },
	{ "ready_kept_block_unwritable",	test_ready_kept_block_unwritable, true },
};

/* Each subtest gets a fresh process, so a failed assertion stays local. */
static void run_subtest(unsigned int i)
{
	int status;
	pid_t pid;

	pid = fork();
	TEST_ASSERT(pid >= 0, "fork() failed, errno %d", errno);
	if (!pid) {
		subtests[i].run();
		exit(KSFT_PASS);
	}

	TEST_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid() failed");
	if (WIFEXITED(status) && WEXITSTATUS(status) == KSFT_SKIP)
		ksft_test_result_skip("%s\n", subtests[i].name);
	else
		ksft_test_result(WIFEXITED(status) &&
				 WEXITSTATUS(status) == KSFT_PASS,
				 "%s\n", subtests[i].name);
}

static bool apf_supported(void)
{
	struct kvm_vcpu *vcpu;
	struct kvm_vm *vm;
	int ret;

	vm = vm_create_with_one_vcpu(&vcpu, guest_discovery);
	ret = __vcpu_has_device_attr(vcpu, KVM_ARM_VCPU_ASYNC_PF_CTRL,
				     KVM_ARM_VCPU_ASYNC_PF_BLOCK);
	kvm_vm_free(vm);

	return !ret;
}

static bool uffd_supported(void)
{
#ifdef __NR_userfaultfd
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd >= 0) {
		close(fd);
		return true;
	}
#endif
	return false;
}

/* Usage: async_pf_test [N...]: run only subtests N (1-based), for debugging. */
int main(int argc, char *argv[])
{
	bool have_uffd, selected[ARRAY_SIZE(subtests)];
	unsigned int i, nr = ARRAY_SIZE(subtests);
	int arg;

	for (i = 0; i < ARRAY_SIZE(subtests); i++)
		selected[i] = argc < 2;
	for (arg = 1; arg < argc; arg++) {
		i = atoi(argv[arg]);
		TEST_ASSERT(i >= 1 && i <= ARRAY_SIZE(subtests),
			    "No subtest %s (1-%zu)", argv[arg], ARRAY_SIZE(subtests));
		selected[i - 1] = true;
	}
	if (argc > 1)
		nr = argc - 1;

	ksft_print_header();

	if (!apf_supported())
		ksft_exit_skip("KVM without asynchronous page fault support\n");
	have_uffd = uffd_supported();

	ksft_set_plan(nr);

	for (i = 0; i < ARRAY_SIZE(subtests); i++) {
		if (!selected[i])
			continue;
		if (subtests[i].needs_uffd && !have_uffd)
			ksft_test_result_skip("%s: userfaultfd unavailable\n",
					      subtests[i].name);
		else
			run_subtest(i);
	}

	ksft_finished();
}
