"""Serving: HTTP + WebSocket (``app``), the raw-frame pipe (``pipe``), online adaptation beside
serving (``adaptation``), all over one ``Service`` (model, C++ stream loop, metrics).

Starlette and uvicorn are imported only by the modules that serve HTTP (the ``serve`` extra).
"""
from same_fast.serve.config import ServeConfig

__all__ = ["ServeConfig"]
