"""vuser: a vfio-user server emulating PASID/ATS/PRI DMA devices over an ioasid model."""

__version__ = "0.1.0"
