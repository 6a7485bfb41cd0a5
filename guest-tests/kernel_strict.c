/* kernel_strict: kernel_lazy.c built for the boot with iommu.strict=1
 * (tests/guest/guest_tests.toml), where every dma_unmap_single invalidates
 * before it returns. The cases and what each expects are in kernel_lazy.c. */
#define KERNEL_STRICT 1
#include "kernel_lazy.c"
