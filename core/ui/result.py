"""The result of a finished run: the still, the playable clip and download buttons."""

from __future__ import annotations

import streamlit as st

from core.runtime import Runtime
from core.ui import media
from core.views.run import RunResult


def result_preview(runtime: Runtime, result: RunResult) -> None:
    image, video = result.image, result.video
    if result.is_empty:
        st.info("This run finished without stored files.")
        return
    with st.container(key="watch_result", border=True):
        st.subheader("🎞️ Result")
        left, right = st.columns([3, 2])
        with left:
            if video is not None:
                source = media.source_of(runtime, video)
                if source is None:
                    st.warning("The video file could not be read from storage.")
                else:
                    st.video(source, format=video.content_type)
                facts = [f"{video.width}×{video.height}" if video.width else ""]
                if video.duration_s:
                    facts.append(f"{video.duration_s:.1f} s")
                facts.append(f"{video.size_bytes / 1_000_000:.1f} MB")
                st.caption(" · ".join(f for f in facts if f))
        with right:
            if image is not None:
                source = media.source_of(runtime, image)
                if source is None:
                    st.warning("The image file could not be read from storage.")
                else:
                    st.image(source, caption="First frame", width="stretch")
        buttons = st.columns(2)
        if video is not None:
            with buttons[0]:
                media.download(runtime, video, key="watch_download_video", label="Download video")
        if image is not None:
            with buttons[1]:
                media.download(runtime, image, key="watch_download_image", label="Download image")
