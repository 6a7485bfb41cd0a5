"""Guest images and guest-side test results.

- ``image``: build (and cache) the kernel + initramfs a guest boots from.
- ``newc``: the initramfs archive writer.
- ``kernel``: the Debian kernel package layout and module dependency closure.
- ``bzimage``: a bzImage's release (x86 setup header) and embedded config.
- ``localkernel``, ``custom_image``: a user's kernel and modules tree, and its image.
- ``requirements``: the kernel options (and ``vuser_dma.ko``) each program needs.
- ``kernel_choice``: ``vuser run --kernel debian:SUITE|PATH``.
- ``programs``: compiling ``guest-tests/`` statically with the host's gcc.
- ``elfcases``: reading the test cases a guest test binary declares.
- ``ktap``: parsing the KTAP the guest prints on its serial console.
- ``pytest_plugin``: guest test cases as pytest items.
"""
