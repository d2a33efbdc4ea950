"""The HTTP API: the original system's endpoints over the same engine as the pages (FastAPI,
served by uvicorn through `python -m core api`). No Streamlit here."""

from core.api.app import create_app

__all__ = ["create_app"]
