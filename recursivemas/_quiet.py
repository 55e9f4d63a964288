"""Warnings that a user of this project cannot act on, dropped at their source (imported first by the package).

DeepSpeed, which accelerate imports whenever a model is saved (``recursivemas models pull`` converting a model) and
which ZeRO training uses, logs "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
detect it." as a warning, on stdout, on every machine without a GPU: nothing to act on there, and a GPU that is there
but unseen fails loudly where a backbone asks for ``device: cuda``. Only that one record is dropped; DeepSpeed's
other messages pass.
"""

from __future__ import annotations

import logging

CPU_ACCELERATOR_NOTICE = "Setting accelerator to CPU."


class _DropCpuAcceleratorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CPU_ACCELERATOR_NOTICE)


def install() -> None:
    """Filter DeepSpeed's own logger (created here if DeepSpeed is not imported yet; it keeps the filter). Once."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropCpuAcceleratorNotice) for f in logger.filters):
        logger.addFilter(_DropCpuAcceleratorNotice())


install()
