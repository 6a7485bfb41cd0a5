"""QEMU for vuser: finding or provisioning a QEMU with ``vfio-user-pci``, and launching guests.

- ``find``: ``QemuBinary`` and ``find_qemu()`` ($VUSER_QEMU, system, provisioned).
- ``provision``: the private runtime from Debian's ``qemu-system-x86`` package.
- ``cmdline``: the QEMU command line for a guest with vfio-user devices.
- ``launcher``: ``launch()``, which runs the vuser server and QEMU and tears both down.
"""
