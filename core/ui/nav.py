"""The app's pages: where each lives, its title, icon and URL, and who may see it.

Admin pages arrive with their own issues (monitoring, credits admin, system health). Each is
listed here already and joins the menu, for admins only, as soon as its file exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PageSpec:
    path: str  # relative to app.py
    title: str
    icon: str
    url_path: str
    section: str
    admin_only: bool = False

    @property
    def exists(self) -> bool:
        return (APP_ROOT / self.path).is_file()


CREATE = PageSpec("pages/create.py", "Create", ":material/movie_edit:", "create", "Studio")
WATCH = PageSpec("pages/watch.py", "Watch", ":material/live_tv:", "watch", "Studio")
INBOX = PageSpec("pages/inbox.py", "Inbox", ":material/notifications:", "inbox", "Studio")
HISTORY = PageSpec("pages/history.py", "History", ":material/history:", "history", "Library")
GALLERY = PageSpec("pages/gallery.py", "Gallery", ":material/video_library:", "gallery", "Library")
API_TOKENS = PageSpec("pages/api_tokens.py", "API tokens", ":material/key:", "tokens", "Account")
MONITORING = PageSpec(
    "pages/monitoring.py", "Monitoring", ":material/monitoring:", "monitoring", "Admin", True
)
CREDITS_ADMIN = PageSpec(
    "pages/credits_admin.py",
    "Credits",
    ":material/account_balance_wallet:",
    "credits",
    "Admin",
    True,
)
HEALTH = PageSpec(
    "pages/health.py", "System health", ":material/health_and_safety:", "health", "Admin", True
)

USER_PAGES = (CREATE, WATCH, INBOX, HISTORY, GALLERY, API_TOKENS)
ADMIN_PAGES = (MONITORING, CREDITS_ADMIN, HEALTH)


def pages_for(is_admin: bool) -> list[PageSpec]:
    """The pages a user's menu holds: a non-admin's app has no admin pages at all."""
    admin = [p for p in ADMIN_PAGES if p.exists] if is_admin else []
    return [*USER_PAGES, *admin]


def routable_pages() -> list[PageSpec]:
    """Every page whose file exists: the URLs the app answers for anyone (each page checks the
    session and the role itself; the menu is `pages_for`)."""
    return pages_for(True)
