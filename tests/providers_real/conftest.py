"""Real provider adapters against the local API twins, over real HTTP(S)."""

from tests.twins.fixtures import *  # noqa: F403 - fixtures and the hooks that bind fal_client
