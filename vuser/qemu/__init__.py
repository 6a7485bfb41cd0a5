"""QEMU for vuser: finding or provisioning a QEMU with ``vfio-user-pci``, and launching guests.

- ``find``: ``QemuBinary`` and ``find_qemu()`` ($VUSER_QEMU, system, provisioned).
- ``provision``: the private runtime from Debian's ``qemu-system-x86`` package.
- ``cmdline``: the QEMU command line for a guest with vfio-user devices.
- ``launcher``: ``launch()``, which runs the vuser server and QEMU and tears both down.
- ``topology``: where the firmware puts each device (BDF, BAR0): a firmware-only
  probe boot through QMP ``query-pci``, cached.
- ``dmar``: the ACPI DMAR table for a kernel-owned vuser-iommu.
- ``kernel_iommu``: what a kernel-owned guest gets (BDF labels, unit options, DMAR,
  kernel options, the kernel config check).
"""
