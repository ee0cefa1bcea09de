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
 *  - a vCPU reset with a fault in flight: the registration is forgotten
 *    and the old block is never written again.
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
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <linux/arm-smccc.h>
#include <linux/bitfield.h>
#include <linux/userfaultfd.h>
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
	APF_STAT_SYNC_NOT_EL0,
	APF_STAT_SYNC_DISABLED,
	APF_STAT_SYNC_BUSY,
	APF_STAT_SYNC_QUEUE_FULL,
	APF_STAT_SYNC_REPEAT,
	NR_APF_STATS,
};

static const char * const apf_stat_names[NR_APF_STATS] = {
	[APF_STAT_NOT_PRESENT]		= "apf_not_present",
	[APF_STAT_READY]		= "apf_ready",
	[APF_STAT_SYNC_NOT_EL0]		= "apf_sync_not_el0",
	[APF_STAT_SYNC_DISABLED]	= "apf_sync_disabled",
	[APF_STAT_SYNC_BUSY]		= "apf_sync_busy",
	[APF_STAT_SYNC_QUEUE_FULL]	= "apf_sync_queue_full",
	[APF_STAT_SYNC_REPEAT]		= "apf_sync_repeat",
};

/* Filled in by the host before the first run. */
static struct {
	uint64_t stride;
	uint64_t el0_args;		/* GVA of struct el0_args */
	uint64_t el0_sp;		/* initial SP_EL0 */
	uint64_t block_gpa[2];		/* in two different memslots */
	uint64_t straddle_gpa;		/* last 32 bytes of BLOCK_SLOT */
	uint32_t expected_irq;
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
 * one records it, frees the block, skips the load with a poison value in
 * the destination register and carries on at EL0.
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
	__GUEST_ASSERT(reason == KVM_PV_REASON_PAGE_NOT_PRESENT,
		       "External abort from EL0 with reason %u, FAR 0x%lx",
		       reason, far);
	__GUEST_ASSERT(regs->pc == ASM_SYM(el0_load_insn),
		       "PAGE_NOT_PRESENT at PC 0x%lx, FAR 0x%lx", regs->pc, far);

	n = ev.nr_not_present;
	GUEST_ASSERT(n < MAX_EVENTS);
	ev.np_token[n] = token;
	ev.np_addr[n] = far;
	WRITE_ONCE(ev.nr_not_present, n + 1);

	WRITE_ONCE(apf_block->reason, 0);

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

	gic_init(GIC_V3, 1);
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
 * If the test dies with faults still blocked in userfaultfd, closing the
 * uffd first lets them complete; otherwise destroying the vCPU would wait
 * for the async work forever.
 */
static void pager_atexit(void)
{
	if (pager.uffd >= 0)
		close(pager.uffd);
}

struct apf_vm {
	struct kvm_vm *vm;
	struct kvm_vcpu *vcpu;
	struct uffd_desc *uffd;
};

static void mark_el0_accessible(struct kvm_vm *vm, uint64_t gva, uint64_t len)
{
	uint64_t end = gva + len;

	for (; gva < end; gva += vm->page_size)
		*virt_get_pte_hva(vm, gva) |= PTE_AP_EL0;
}

static void apf_vm_create(struct apf_vm *t, void *guest_code)
{
	uint64_t stride, npages, gva, sctlr;
	struct kvm_vm *vm;
	int gic_fd;

	vm = vm_create_with_one_vcpu(&t->vcpu, guest_code);
	t->vm = vm;
	t->uffd = NULL;

	vm_init_descriptor_tables(vm);
	vcpu_init_descriptor_tables(t->vcpu);
	vm_install_sync_handler(vm, VECTOR_SYNC_LOWER_64, ESR_EC_SVC64,
				guest_svc_handler);
	vm_install_sync_handler(vm, VECTOR_SYNC_LOWER_64, ESR_EC_DABT_LOW,
				guest_el0_abort_handler);
	vm_install_exception_handler(vm, VECTOR_IRQ_CURRENT, guest_irq_handler);

	/* Leave PSTATE.PAN alone on exception entry, the guest clears it. */
	vcpu_get_reg(t->vcpu, KVM_ARM64_SYS_REG(SYS_SCTLR_EL1), &sctlr);
	vcpu_set_reg(t->vcpu, KVM_ARM64_SYS_REG(SYS_SCTLR_EL1),
		     sctlr | SCTLR_EL1_SPAN);

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
	sync_global_to_guest(vm, params);

	gic_fd = vgic_v3_setup(vm, 1, 64);
	__TEST_REQUIRE(gic_fd >= 0, "Failed to create a vgic-v3, skipping");
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
		    "APF not set by default in BMAP_2 (0x%lx)", bmap);

	run_to_done(t.vcpu);
	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 2. Feature hidden by the VMM
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
	struct arm_smccc_res res;
	unsigned int i;

	smccc_hvc(ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID, 0, 0, 0, 0, 0, 0, 0, &res);
	GUEST_ASSERT(!(res.a3 & APF_FEATURES_W3_BIT));

	/* ENABLE gets valid arguments: being hidden is the only problem. */
	for (i = 0; i < ARRAY_SIZE(subcalls); i++)
		__GUEST_ASSERT(apf_call(subcalls[i], params.block_gpa[0],
					KVM_ASYNC_PF_ENABLED) == SMCCC_RET_NOT_SUPPORTED,
			       "Subcall %lu not refused", subcalls[i]);

	GUEST_CHECK_BLOCK(0);
	GUEST_DONE();
}

static void test_hidden(void)
{
	struct apf_vm t;
	uint64_t bmap;
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

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 3. One page, released by the host once it has been requested
 * ---------------------------------------------------------------------
 */
static void guest_single_page(void)
{
	guest_setup();
	guest_enable(0);
	guest_apf_round(0, true);
	GUEST_DONE();
}

static void test_single_page(void)
{
	struct test_page_state page;
	struct apf_vm t;
	struct ucall uc;

	apf_vm_create(&t, guest_single_page);
	apf_vm_start_pager(&t);

	run_to_stage(t.vcpu, STAGE_NOT_PRESENT, &uc);

	/* The background fault-in asks the pager for the page... */
	pager_wait_requests(0, 1);
	page = pager_state(0);
	TEST_ASSERT(!page.served, "Test page served before it was released");

	/* ...which arrives now; PAGE_READY and the retry are checked by the guest. */
	pager_release(0, 1);
	run_to_done(t.vcpu);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 4. All slots in use, then one more fault
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
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_ready), ready);

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
	TEST_ASSERT(pager_state(PG_FULL).served,
		    "Synchronous fault did not fetch its page");
	for (i = 0; i < APF_SLOTS; i++)
		TEST_ASSERT(!pager_state(i).served, "Page %u served early", i);

	pager_release(0, APF_SLOTS);
	run_to_done(t.vcpu);

	for (i = 0; i < APF_SLOTS; i++)
		TEST_ASSERT(pager_state(i).nr_requests,
			    "Page %u became ready without being fetched", i);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 5. Faults taken at EL1 are synchronous
 * ---------------------------------------------------------------------
 */
static void guest_el1_access(void)
{
	uint32_t np, ready;

	guest_setup();
	guest_enable(0);

	np = READ_ONCE(ev.nr_not_present);
	ready = READ_ONCE(ev.nr_ready);

	GUEST_ASSERT_EQ(READ_ONCE(*(uint64_t *)test_page(0)),
			page_pattern(0));
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np);

	GUEST_CHECK_BLOCK(params.block_gpa[0] | KVM_ASYNC_PF_ENABLED);
	guest_assert_quiet(ready);

	GUEST_DONE();
}

static void test_el1_access(void)
{
	struct apf_vm t;

	apf_vm_create(&t, guest_el1_access);
	apf_vm_start_pager(&t);

	pager_release(0, 1);
	run_to_done(t.vcpu);
	TEST_ASSERT(pager_state(0).served, "EL1 access did not fetch the page");

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 6. DISABLE with faults pending
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

	/* The pages are in; with APF off the accesses are synchronous. */
	guest_el0_read(0, 3);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), np + 4);
	for (i = 0; i < 3; i++)
		GUEST_ASSERT_EQ(el0_val(i), page_pattern(i));

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

	apf_vm_create(&t, guest_disable_pending);
	apf_vm_start_pager(&t);

	pager_release(3, 1);
	run_to_stage(t.vcpu, STAGE_PENDING, &uc);
	TEST_ASSERT(!pager_state(0).served && !pager_state(1).served &&
		    !pager_state(2).served, "Pending page served early");

	/*
	 * Release before DISABLE: flushing background fault-ins that are
	 * still blocked in userfaultfd would wait for the pager, and the
	 * pager only runs when this thread gets control back.
	 */
	pager_release(0, 3);
	run_to_done(t.vcpu);

	apf_vm_destroy(&t);
}

/* ---------------------------------------------------------------------
 * 7. Every successful ENABLE queues exactly one wake-all
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
 * ---------------------------------------------------------------------
 */
#define MIGRATION_IRQ	21

static void guest_migration(void)
{
	/* The VMM restored the registration: no ENABLE here. */
	apf_block = (void *)params.block_gpa[0];
	guest_setup();

	guest_wait_ready(1);
	GUEST_ASSERT_EQ(ev.ready_token[0], KVM_ASYNC_PF_WAKE_ALL_TOKEN);
	GUEST_SYNC1(STAGE_RUNNING);
	guest_assert_quiet(1);

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
		     bmap & ~BIT(KVM_REG_ARM_VENDOR_HYP_BIT_ASYNC_PF));
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
 * Harness
 * ---------------------------------------------------------------------
 */
/* ---------------------------------------------------------------------
 * 12. vCPU reset with a fault in flight
 * ---------------------------------------------------------------------
 */
static void guest_reset_pending(void)
{
	guest_setup();
	guest_enable(0);

	/* Page 0 stays with the host: its fetch is in flight at the reset. */
	guest_el0_read(0, 1);
	GUEST_ASSERT_EQ(READ_ONCE(ev.nr_not_present), 1);
	GUEST_SYNC1(STAGE_PENDING);
	GUEST_FAIL("Resumed after the vCPU reset");
}

/* Where the vCPU restarts after the reset: the old block stays untouched. */
static void guest_after_reset(void)
{
	struct kvm_vcpu_pv_apf_data *blk = (void *)params.block_gpa[0];
	int i;

	/* Every guest entry is a chance for the host to deliver something. */
	for (i = 0; i < 3; i++)
		GUEST_ASSERT_EQ(apf_call(KVM_ASYNC_PF_CALL_VERSION, 0, 0),
				SMCCC_RET_SUCCESS);
	GUEST_ASSERT_EQ(READ_ONCE(blk->reason), 0);
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

	run_to_stage(t.vcpu, STAGE_PENDING, &uc);
	pager_wait_requests(0, 1);
	TEST_ASSERT(!pager_state(0).served, "Test page served before it was released");
	read_apf_stats(t.vcpu, before);

	/*
	 * The reset waits for fetches still blocked in userfaultfd, so let
	 * this one complete; its PAGE_READY must never be delivered.
	 */
	pager_release(0, 1);
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
	TEST_ASSERT_EQ(val, KVM_ASYNC_PF_DEFAULT_IRQ);

	run_to_done(t.vcpu);
	read_apf_stats(t.vcpu, after);
	TEST_ASSERT_EQ(after[APF_STAT_READY], before[APF_STAT_READY]);
	TEST_ASSERT_EQ(after[APF_STAT_NOT_PRESENT], before[APF_STAT_NOT_PRESENT]);

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
