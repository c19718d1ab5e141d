"""Templates and static assets of the Approvals pages (package data, served by ``api/routes/ui.py``)."""
