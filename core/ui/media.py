"""Showing stored files: a browser can load an http(s) URL (S3, presigned) directly, but not the
local folder's file:// URLs, so local files are read and handed over as bytes."""

from __future__ import annotations

import logging

import streamlit as st

from core.runtime import Runtime
from core.views.run import download_name
from core.workflows import AssetView

log = logging.getLogger(__name__)


@st.cache_data(ttl=600, max_entries=48, show_spinner=False)
def _stored_bytes(_runtime: Runtime, storage_key: str, sha256: str) -> bytes:
    # Keyed on the checksum as well: a key whose contents changed is read afresh.
    return _runtime.providers.storage.get(storage_key)


def source_of(runtime: Runtime, asset: AssetView) -> str | bytes | None:
    """What st.image / st.video take: a URL when the browser can fetch it, else the bytes.
    None when the file cannot be read (the caller says so on the page)."""
    try:
        url = runtime.providers.storage.url(
            asset.storage_key, expires_s=runtime.settings.presign_expiry_s
        )
        if url.startswith(("http://", "https://")):
            return url
        return _stored_bytes(runtime, asset.storage_key, asset.sha256)
    except Exception:  # noqa: BLE001 - a missing or unreadable file must not break the page
        log.exception("App - cannot read stored %s %s", asset.kind, asset.storage_key)
        return None


def download(runtime: Runtime, asset: AssetView, *, key: str, label: str) -> None:
    source = source_of(runtime, asset)
    if isinstance(source, str):
        st.link_button(label, source, icon=":material/download:")
    elif source is not None:
        st.download_button(
            label,
            data=source,
            file_name=download_name(asset),
            mime=asset.content_type,
            key=key,
            icon=":material/download:",
            on_click="ignore",
        )
