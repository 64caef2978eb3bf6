"""Lightning tasks."""

from .pretrain import CrossScaleMAETask

__all__ = ('CrossScaleMAETask',)
