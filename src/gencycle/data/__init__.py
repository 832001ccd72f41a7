"""Datasets in the formats the field already uses."""

from gencycle.data.dialogsum import (
    SHIPPED_DIR, DialogSumFormatError, DialogueExample, load_dialogsum, load_shipped,
)

__all__ = ["SHIPPED_DIR", "DialogSumFormatError", "DialogueExample", "load_dialogsum", "load_shipped"]
