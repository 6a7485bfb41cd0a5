"""VT-d page-table formats and walkers (docs/architecture.md "The model";
VT-d §3.6-§3.8, §9.7-§9.8).

Pure functions over memory: no model objects, no I/O. The model's DMA path
(``vuser.iommu.dma``) drives them; experiments may call them directly.
"""

from .builder import PageTableBuilder
from .formats import (
    FIRST_STAGE_LEVELS, LEAF_SIZE, PAGE_SIZE, SECOND_STAGE_LEVELS, FirstStagePte,
    SecondStagePte, first_stage_reserved, second_stage_reserved,
)
from .addresses import Gpa, HostOffset, Iova
from .reasons import VTD_REASONS, VtdFaultReason, parse_reason, reason_text, vtd_reason
from .results import Access, Fault, FaultKind, Stage, Translation
from .walker import (
    SecondStageTables, Stage2Port, first_stage_ok, second_stage_ok, walk_first_stage,
    walk_nested, walk_second_stage,
)

__all__ = [
    "Access", "FIRST_STAGE_LEVELS", "Fault", "FaultKind", "FirstStagePte", "Gpa",
    "HostOffset", "Iova", "LEAF_SIZE", "VTD_REASONS", "VtdFaultReason", "parse_reason",
    "reason_text", "vtd_reason",
    "PAGE_SIZE", "PageTableBuilder", "SECOND_STAGE_LEVELS", "SecondStagePte",
    "SecondStageTables", "Stage", "Stage2Port", "Translation", "first_stage_ok",
    "first_stage_reserved", "second_stage_ok", "second_stage_reserved", "walk_first_stage",
    "walk_nested", "walk_second_stage",
]
