"""The read side: one function per view, each returning plain frozen dataclasses, shared by the
pages and the API. No Streamlit here; callers own the session."""
