"""Routers of the ``/hitl`` app, one module per resource."""
