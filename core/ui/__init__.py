"""Reusable Streamlit widgets and the app's per-process wiring. The only part of `core` that
imports streamlit; pages are thin files over these and the headless modules."""
