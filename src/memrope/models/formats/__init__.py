"""One module per transformer checkpoint format; :mod:`memrope.models.checkpoints` dispatches."""
