"""Files on disk: input stacks (TIFF) and localization tables (CSV, HDF5 + yaml)."""

from engines.io.loctable import LocTable, open_table_writer, read_table
from engines.io.stacks import Stack, open_stack

__all__ = ["LocTable", "Stack", "open_stack", "open_table_writer", "read_table"]
