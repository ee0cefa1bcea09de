// SPDX-License-Identifier: GPL-2.0

#include <linux/cpumask.h>
#include <linux/irqflags.h>
#include <linux/percpu.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/smp.h>

unsigned long rust_helper_local_irq_save(void)
{
	unsigned long flags;

	local_irq_save(flags);
	return flags;
}

void rust_helper_local_irq_restore(unsigned long flags)
{
	local_irq_restore(flags);
}

unsigned int rust_helper_raw_smp_processor_id(void)
{
	return raw_smp_processor_id();
}

#ifdef CONFIG_OF
#include <linux/of.h>

void rust_helper_of_node_put(struct device_node *node)
{
	of_node_put(node);
}
#endif

void rust_helper_resched_current(void)
{
	set_tsk_need_resched(current);
	set_preempt_need_resched();
}

bool rust_helper_cpu_possible(unsigned int cpu)
{
	return cpu_possible(cpu);
}

void *rust_helper_per_cpu_ptr(void __percpu *ptr, unsigned int cpu)
{
	return per_cpu_ptr(ptr, cpu);
}
