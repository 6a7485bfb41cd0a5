"""PCI building blocks: config space, BARs, capabilities, regions and interrupts.

No asyncio and no sockets here; ``vuser.devices.base.PciDevice`` assembles
these into a vfio-user ``ServerBackend``.
"""

from .bar import Bar, BarKind, BarReg, RomReg, bar_offset, define_rom_bar
from .caps import Capability, CapabilityChain, CapEntry, ExtCapHeader, walk_extended, walk_standard
from .caps_ext import Ats, Pasid, Pri, Vsec
from .caps_std import MsiX, Msi, PciExpress, PowerManagement, VendorSpecific
from .config import (
    PCI_CONFIG_SPACE_SIZE, PCIE_CONFIG_SPACE_SIZE, Command, ConfigSpace, Status, Type0Header,
)
from .irq import Interrupts, IrqIndex
from .region import MsixRegion, RamRegion, Region, Register, RegisterFile, RomRegion

__all__ = [
    "Bar", "BarKind", "BarReg", "RomReg", "bar_offset", "define_rom_bar",
    "Capability", "CapabilityChain", "CapEntry", "ExtCapHeader", "walk_standard", "walk_extended",
    "Ats", "Pasid", "Pri", "Vsec", "MsiX", "Msi", "PciExpress", "PowerManagement",
    "VendorSpecific", "PCI_CONFIG_SPACE_SIZE", "PCIE_CONFIG_SPACE_SIZE", "Command",
    "ConfigSpace", "Status", "Type0Header", "Interrupts", "IrqIndex",
    "MsixRegion", "RamRegion", "Region", "Register", "RegisterFile", "RomRegion",
]
