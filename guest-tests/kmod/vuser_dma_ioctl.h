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
	/* out, kernel-owned vIOMMU: */
	__u32 pasid_owner;    /* VUSER_DMA_OWNER_*: who enabled PASID */
	__u32 domain;         /* VUSER_DMA_DOMAIN_*: the device's default IOMMU domain */
	__u32 ats_enabled;    /* pci_dev ats_enabled (the IOMMU driver enables ATS) */
	__u32 pri_enabled;    /* pci_dev pri_enabled (6.1: the IOMMU driver enables PRI) */
};

#define VUSER_DMA_OWNER_NONE 0     /* PASID is off */
#define VUSER_DMA_OWNER_DRIVER 1   /* this driver enabled it (no kernel IOMMU) */
#define VUSER_DMA_OWNER_IOMMU 2    /* the kernel's IOMMU driver had enabled it */

#define VUSER_DMA_DOMAIN_NONE 0    /* no IOMMU: the DMA API gives physical addresses */
#define VUSER_DMA_DOMAIN_IDENTITY 1
#define VUSER_DMA_DOMAIN_DMA 2     /* translated, strict invalidation */
#define VUSER_DMA_DOMAIN_DMA_FQ 3  /* translated, lazy invalidation (flush queue) */
#define VUSER_DMA_DOMAIN_OTHER 4

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
	/* in */
	__u32 flags;          /* VUSER_DMA_MEMCPY_COHERENT_*: dma_alloc_coherent buffers */
	__u32 reserved;
	/* out: the buffers' DMA addresses (IOVAs behind an IOMMU) and physical addresses */
	__u64 src_dma;
	__u64 dst_dma;
	__u64 src_phys;
	__u64 dst_phys;
};

#define VUSER_DMA_MEMCPY_COHERENT_SRC (1u << 0)  /* else kmalloc + dma_map_single */
#define VUSER_DMA_MEMCPY_COHERENT_DST (1u << 1)

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

/*
 * VUSER_DMA_IOC_STALE: DMA to an address after dma_unmap_single. The driver
 * maps one page (DMA_FROM_DEVICE), FILLs it through the device with
 * `pattern` (which also puts the translation in the IOMMU's caches), unmaps
 * it, waits `delay_ms` (0: none), then FILLs the unmapped IOVA with
 * ~pattern. The page stays the driver's until both descriptors ended, so
 * whether the second FILL was blocked or landed is read from it. With
 * VUSER_DMA_STALE_NO_SOFTIRQ the unmap and the second FILL run with
 * softirqs off on this CPU (completion polled), so the IOMMU's flush-queue
 * timer cannot run in between. With VUSER_DMA_STALE_BLOCK_ON_FAULT the second
 * FILL has the block-on-fault flag: its fault becomes a page request.
 */
struct vuser_dma_stale {
	__u32 queue;
	__u32 flags;          /* VUSER_DMA_STALE_* */
	__u32 delay_ms;       /* between dma_unmap_single and the second FILL */
	__u32 timeout_ms;
	__u64 pattern;
	/* out */
	__u64 iova;           /* the page's DMA address */
	__u64 phys;
	__u32 first_status;   /* the FILL while mapped */
	__u32 status;         /* the FILL after the unmap: completion status */
	__u32 fault_info;
	__u32 cpus;           /* CPUs online (the softirq guard holds on one CPU only) */
	__u64 fault_addr;
	__u64 bytes_done;
	__u64 landed;         /* bytes of the page that hold ~pattern afterwards */
};

#define VUSER_DMA_STALE_NO_SOFTIRQ (1u << 0)
#define VUSER_DMA_STALE_BLOCK_ON_FAULT (1u << 1)

/*
 * Shared virtual addressing (6.1 API): VUSER_DMA_IOC_SVA_BIND enables
 * IOMMU_DEV_FEAT_IOPF and IOMMU_DEV_FEAT_SVA and binds the calling
 * process's mm (iommu_sva_bind_device); the PASID is its
 * iommu_sva_get_pasid(). One bind per open file; closing the file unbinds.
 * The features are copied out even when the bind fails (then with its errno).
 */
struct vuser_dma_sva_bind {
	__u32 pasid;          /* out */
	__u32 features;       /* out, also when the bind fails: VUSER_DMA_FEAT_* enabled */
};

#define VUSER_DMA_FEAT_IOPF (1u << 0)
#define VUSER_DMA_FEAT_SVA (1u << 1)

/*
 * VUSER_DMA_IOC_SVA_COPY: MEMCPY of len bytes from src to dst, both virtual
 * addresses of the calling process, tagged with `pasid` (0: the file's bound
 * PASID). The completion record is untagged, in the driver's memory.
 * VUSER_DMA_SVA_BLOCK_ON_FAULT sets the descriptor's block-on-fault flag (a
 * not-present page is page-requested through PRI instead of failing).
 */
struct vuser_dma_sva_copy {
	__u64 src;
	__u64 dst;
	__u64 len;            /* <= 16 MiB */
	__u32 pasid;          /* 0: the bound PASID; else bits 19:0 */
	__u32 flags;          /* VUSER_DMA_SVA_* */
	__u32 queue;
	__u32 timeout_ms;
	/* out */
	__u32 status;
	__u32 fault_info;
	__u64 bytes_done;
	__u64 fault_addr;
	__u32 used_pasid;
	__u32 reserved;
};

#define VUSER_DMA_SVA_BLOCK_ON_FAULT (1u << 0)

/*
 * VUSER_DMA_IOC_SVA_UNBIND_QUEUED: unbinding while descriptors are queued.
 * The driver stops the device (CTRL.ENABLE clear), queues `count` MEMCPYs of
 * len bytes from src to dst + i*len tagged with the bound PASID (with
 * block-on-fault), unbinds the mm, starts the device again and waits for
 * every descriptor to end. statuses[i] is each one's completion status.
 */
struct vuser_dma_sva_unbind_queued {
	__u64 src;
	__u64 dst;
	__u64 len;
	__u32 count;          /* 1 .. 8 */
	__u32 queue;
	__u32 timeout_ms;
	__u32 unbound;        /* out: 1 once the mm was unbound */
	__u8 statuses[8];     /* out */
};

#define VUSER_DMA_IOC_MAGIC 'v'
#define VUSER_DMA_IOC_INFO _IOR(VUSER_DMA_IOC_MAGIC, 0, struct vuser_dma_info)
#define VUSER_DMA_IOC_MEMCPY _IOWR(VUSER_DMA_IOC_MAGIC, 1, struct vuser_dma_memcpy)
#define VUSER_DMA_IOC_SUBMIT _IOWR(VUSER_DMA_IOC_MAGIC, 2, struct vuser_dma_submit)
#define VUSER_DMA_IOC_IRQ_COUNTS _IOR(VUSER_DMA_IOC_MAGIC, 3, struct vuser_dma_irq_counts)
#define VUSER_DMA_IOC_MASK _IOW(VUSER_DMA_IOC_MAGIC, 4, struct vuser_dma_mask)
#define VUSER_DMA_IOC_PENDING _IOR(VUSER_DMA_IOC_MAGIC, 5, struct vuser_dma_pending)
#define VUSER_DMA_IOC_STALE _IOWR(VUSER_DMA_IOC_MAGIC, 6, struct vuser_dma_stale)
#define VUSER_DMA_IOC_SVA_BIND _IOR(VUSER_DMA_IOC_MAGIC, 7, struct vuser_dma_sva_bind)
#define VUSER_DMA_IOC_SVA_UNBIND _IO(VUSER_DMA_IOC_MAGIC, 8)
#define VUSER_DMA_IOC_SVA_COPY _IOWR(VUSER_DMA_IOC_MAGIC, 9, struct vuser_dma_sva_copy)
#define VUSER_DMA_IOC_SVA_UNBIND_QUEUED \
	_IOWR(VUSER_DMA_IOC_MAGIC, 10, struct vuser_dma_sva_unbind_queued)

#endif
