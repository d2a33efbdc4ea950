"""Gallery: the user's finished videos and their first frames in a grid, searchable, each opening
its watch page."""

import streamlit as st

from core import projects
from core.ui import format as fmt
from core.ui import media, nav, text
from core.ui.database import guarded
from core.ui.runtime import get_runtime
from core.ui.session import require_user
from core.views import history
from core.views.history import GalleryItem, RunFilter

PER_PAGE = 9
COLUMNS = 3

runtime = get_runtime()
user = require_user()

st.title("🎞️ Gallery")
st.caption("Every finished run: play the clip, download it, or open the run.")

with guarded("gallery could not read projects"), runtime.db.read() as session:
    project_names = {p.id: p.name for p in projects.list_projects(session, user.id)}

search_col, project_col, show_col = st.columns([3, 2, 2], vertical_alignment="bottom")
search = search_col.text_input("Search", key="gallery_search", placeholder="words in a prompt")
project_id = project_col.selectbox(
    "Project",
    list(project_names),
    key="gallery_project",
    format_func=project_names.get,
    placeholder="All projects",
)
show = show_col.segmented_control(
    "Show", ["Videos", "Images"], key="gallery_show", default="Videos"
)
everyone = user.is_admin and st.toggle("Everyone's runs (admin)", key="gallery_everyone")
flt = RunFilter(search=search, project_id=project_id, everyone=everyone)
filter_key = repr(flt)
if st.session_state.get("gallery_filter_key") != filter_key:
    st.session_state["gallery_filter_key"] = filter_key
    st.session_state["gallery_page"] = 1
page = st.session_state.get("gallery_page", 1)

with guarded("gallery could not read runs"), runtime.db.read() as session:
    items, total = history.gallery(session, user, flt, limit=PER_PAGE, offset=(page - 1) * PER_PAGE)

if not items:
    st.info(
        "No finished videos match this search."
        if search or project_id
        else "No finished videos yet: your first one will appear here."
    )
    st.page_link(nav.CREATE.path, label="Create a video", icon=":material/add:")
    st.stop()


def card(item: GalleryItem) -> None:
    run = item.run
    with st.container(border=True, key=f"gallery_card_{run.id}"):
        asset = item.image if show == "Images" else (item.video or item.image)
        source = media.source_of(runtime, asset) if asset else None
        if source is None:
            st.warning("The file could not be read from storage.")
        elif asset.kind == "video":
            st.video(source, format=asset.content_type)
        else:
            st.image(source, width="stretch")
        text.literal(run.image_prompt, limit=70)
        text.literal(run.video_prompt, limit=90)
        owner = [f"👤 {run.owner_email}"] if everyone and run.user_id != user.id else []
        project = [f"📁 {run.project_name}"] if run.project_name else []
        if owner or project:
            text.literal(" · ".join(owner + project))
        st.caption(f"{fmt.ago(run.created_at)} · {run.cost_credits} cr")
        open_col, download_col = st.columns(2)
        if open_col.button("Open", key=f"gallery_open_{run.id}", icon=":material/open_in_new:"):
            st.switch_page(nav.WATCH.path, query_params={"id": run.id})
        if asset is not None:
            with download_col:
                media.download(runtime, asset, key=f"gallery_download_{run.id}", label="Download")


for start in range(0, len(items), COLUMNS):
    for column, item in zip(st.columns(COLUMNS), items[start : start + COLUMNS], strict=False):
        with column:
            card(item)

pages = max(1, -(-total // PER_PAGE))
prev_col, info_col, next_col = st.columns([1, 3, 1], vertical_alignment="center")
if prev_col.button(
    "Previous", key="gallery_prev", disabled=page <= 1, icon=":material/chevron_left:"
):
    st.session_state["gallery_page"] = page - 1
    st.rerun()
info_col.caption(f"{fmt.plural(total, 'finished run')} · page {page} of {pages}")
if next_col.button(
    "Next", key="gallery_next", disabled=page >= pages, icon=":material/chevron_right:"
):
    st.session_state["gallery_page"] = page + 1
    st.rerun()
