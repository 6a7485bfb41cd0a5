"""asyncio transport for vfio-user: UNIX sockets with SCM_RIGHTS fds.

- ``channel``: a ``Connection`` pumped on a non-blocking socket (recvmsg/sendmsg).
- ``server``: ``DeviceServer``, one device per socket, one client at a time.
- ``dma``: ``DmaSpace``, the DMA_MAP table and the devices' ``DmaPort``.
- ``client``: ``Client``, a Python vfio-user client for tests and benchmarks.
"""
