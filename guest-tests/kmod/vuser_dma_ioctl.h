/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The ioctl interface of the vuser_dma kernel driver (vuser_dma.c): one
 * character device /dev/vuser_dma<N> per bound vuser-dma function.
 *
 * Shared by the driver and by userspace (guest-tests/lib/vuser.h), so it only
 * uses <linux/types.h> and <linux/ioctl.h>.
 */
#ifndef VUSER_DMA_IOCTL_H
#define VUSER_DMA_IOCTL_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define VUSER_DMA_MAX_QUEUES 8
#define VUSER_DMA_MAX_VECTORS (VUSER_DMA_MAX_QUEUES + 1)

/* VUSER_DMA_IOC_INFO: what the driver found. */
struct vuser_dma_info {
	__u32 label;          /* the device label (stream id) the vIOMMU knows it by */
	__u32 cap;            /* the CAP register */
	__u32 nqueues;        /* queues the driver set up, one MSI-X vector each */
	__u32 nvectors;       /* MSI-X vectors allocated (queues + the error vector) */
	__u32 ring_entries;   /* descriptors per ring */
	__u32 pasid_enabled;  /* the PASID capability's Enable bit is set */
};

/*
 * VUSER_DMA_IOC_MEMCPY: copy len bytes from the user buffer src to the user
 * buffer dst through the device, without a PASID: the driver copies src into
 * a DMA API buffer, the device copies it into a second one, the MSI-X
 * interrupt of `queue` signals the completion, and the result is copied out.
 */
struct vuser_dma_memcpy {
	__u64 src;            /* user pointer */
	__u64 dst;            /* user pointer */
	__u64 len;            /* <= 1 MiB */
	__u32 queue;
	__u32 timeout_ms;
	/* out */
	__u32 status;         /* completion record status (1 = success) */
	__u32 fault_info;
	__u64 bytes_done;
	__u64 fault_addr;
	__u64 irqs;           /* interrupts counted on the queue's vector during the call */
};

/*
 * VUSER_DMA_IOC_SUBMIT: a raw descriptor, typically PASID-tagged, whose
 * addresses (including the completion record's) are in that PASID's address
 * space, set up by the caller through the vIOMMU. The driver adds the IRQ
 * flag, submits it on `queue` and, with wait, sleeps until the queue's
 * COMPLETED count passes it (signalled by the queue's MSI-X vector).
 */
struct vuser_dma_submit {
	__u8 opcode;
	__u8 flags;
	__u16 reserved;
	__u32 pasid;          /* bit 31 valid, bits 19:0 PASID (as in the descriptor) */
	__u64 src;
	__u64 dst;
	__u64 len;
	__u64 completion;
	__u64 pattern;
	__u32 queue;
	__u32 wait;           /* 1: wait for the completion interrupt */
	__u32 timeout_ms;
	/* out */
	__u32 completed;      /* the queue's COMPLETED register afterwards */
	__u64 irqs;           /* interrupts counted on the queue's vector during the call */
};

/* VUSER_DMA_IOC_IRQ_COUNTS: interrupts handled per vector since probe. */
struct vuser_dma_irq_counts {
	__u64 count[VUSER_DMA_MAX_VECTORS];
	__u32 nvectors;
	__u32 reserved;
};

/*
 * VUSER_DMA_IOC_MASK: mask (1) or unmask (0) one MSI-X vector at the
 * device's MSI-X table (the Vector Control mask bit). While masked, the
 * device's message is held pending in the PBA; unmasking delivers it.
 */
struct vuser_dma_mask {
	__u32 vector;
	__u32 masked;
};

/*
 * VUSER_DMA_IOC_PENDING: the MSI-X Pending Bit Array (first 64 vectors),
 * and each vector's Vector Control word from the MSI-X table (bit 0: masked).
 */
struct vuser_dma_pending {
	__u64 pba;
	__u32 vector_ctrl[VUSER_DMA_MAX_VECTORS];
	__u32 reserved;
};

#define VUSER_DMA_IOC_MAGIC 'v'
#define VUSER_DMA_IOC_INFO _IOR(VUSER_DMA_IOC_MAGIC, 0, struct vuser_dma_info)
#define VUSER_DMA_IOC_MEMCPY _IOWR(VUSER_DMA_IOC_MAGIC, 1, struct vuser_dma_memcpy)
#define VUSER_DMA_IOC_SUBMIT _IOWR(VUSER_DMA_IOC_MAGIC, 2, struct vuser_dma_submit)
#define VUSER_DMA_IOC_IRQ_COUNTS _IOR(VUSER_DMA_IOC_MAGIC, 3, struct vuser_dma_irq_counts)
#define VUSER_DMA_IOC_MASK _IOW(VUSER_DMA_IOC_MAGIC, 4, struct vuser_dma_mask)
#define VUSER_DMA_IOC_PENDING _IOR(VUSER_DMA_IOC_MAGIC, 5, struct vuser_dma_pending)

#endif
