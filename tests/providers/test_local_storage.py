"""A folder as object storage: round trips, atomic overwrites, and keys that cannot escape."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from core.providers.base import StoredObject
from core.providers.offline import LocalStorage

KEY = "users/3/workflows/ab12/image.png"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def test_what_is_put_can_be_got_back_with_its_size_and_type(storage: LocalStorage) -> None:
    storage.put(KEY, b"png bytes", "image/png")

    assert storage.get(KEY) == b"png bytes"
    assert storage.head(KEY) == StoredObject(key=KEY, size=9, content_type="image/png")


def test_the_content_type_is_the_one_given_not_the_one_the_extension_suggests(
    storage: LocalStorage,
) -> None:
    storage.put("clips/raw.bin", b"\x00\x00", "video/mp4")

    assert storage.head("clips/raw.bin") == StoredObject("clips/raw.bin", 2, "video/mp4")


def test_a_file_placed_by_hand_gets_its_type_from_the_extension(
    storage: LocalStorage, tmp_path: Path
) -> None:
    (tmp_path / "storage" / "seed").mkdir(parents=True)
    (tmp_path / "storage" / "seed" / "clip.mp4").write_bytes(b"1234")

    assert storage.head("seed/clip.mp4") == StoredObject("seed/clip.mp4", 4, "video/mp4")


def test_a_missing_key_has_no_head_cannot_be_got_and_deletes_quietly(
    storage: LocalStorage,
) -> None:
    assert storage.head(KEY) is None
    with pytest.raises(FileNotFoundError):
        storage.get(KEY)
    storage.delete(KEY)


def test_delete_removes_the_object_and_its_metadata(storage: LocalStorage, tmp_path: Path) -> None:
    storage.put(KEY, b"png bytes", "image/png")

    storage.delete(KEY)

    assert storage.head(KEY) is None
    assert [p for p in (tmp_path / "storage").rglob("*") if p.is_file()] == []


def test_a_copy_has_the_bytes_and_type_and_outlives_its_source(storage: LocalStorage) -> None:
    storage.put("staging/still.bin", b"png bytes", "image/png")

    storage.copy("staging/still.bin", KEY)
    storage.delete("staging/still.bin")

    assert storage.get(KEY) == b"png bytes"
    assert storage.head(KEY) == StoredObject(key=KEY, size=9, content_type="image/png")


def test_a_copy_over_an_object_replaces_it_and_a_later_put_of_the_source_does_not_reach_it(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.put("staging/still.png", b"first", "image/png")
    storage.put(KEY, b"older", "image/png")

    storage.copy("staging/still.png", KEY)
    storage.put("staging/still.png", b"second", "image/png")  # a new file, not the linked one

    assert storage.get(KEY) == b"first"
    assert not [p for p in (tmp_path / "storage").rglob("*.tmp")]


def test_a_copy_of_a_missing_object_fails_and_writes_nothing(
    storage: LocalStorage, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        storage.copy("staging/none.png", KEY)
    assert storage.head(KEY) is None
    assert [p for p in (tmp_path / "storage").rglob("*") if p.is_file()] == []


def test_the_url_is_a_file_uri_of_the_object(storage: LocalStorage) -> None:
    storage.put("a dir/clip #1.mp4", b"video", "video/mp4")

    url = storage.url("a dir/clip #1.mp4", expires_s=60)

    assert url.startswith("file:///")
    assert Path(url2pathname(urlparse(url).path)).read_bytes() == b"video"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.txt",
        "users/../../outside.txt",
        "users/./x",
        "users\\..\\x",
        "users//x",
        "users/",
        "a\x00b",
        "image.png.meta.json",
    ],
)
def test_keys_that_are_not_plain_relative_paths_are_refused(
    storage: LocalStorage, key: str
) -> None:
    for call in (storage.get, storage.head, storage.delete):
        with pytest.raises(ValueError):
            call(key)
    with pytest.raises(ValueError):
        storage.put(key, b"x", "text/plain")
    with pytest.raises(ValueError):
        storage.url(key, expires_s=60)


def test_an_overwrite_replaces_the_object_and_leaves_no_temporary_files(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.put(KEY, b"first", "image/png")
    storage.put(KEY, b"second", "image/webp")

    assert storage.get(KEY) == b"second"
    assert storage.head(KEY) == StoredObject(KEY, 6, "image/webp")
    names = sorted(p.name for p in (tmp_path / "storage").rglob("*") if p.is_file())
    assert names == ["image.png", "image.png.meta.json"]


def test_readers_never_see_half_a_write_while_threads_overwrite(storage: LocalStorage) -> None:
    payloads = [bytes([n]) * 200_000 for n in range(8)]
    storage.put(KEY, payloads[0], "image/png")
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(storage.get(KEY))

    def write(payload: bytes) -> None:
        for _ in range(10):
            storage.put(KEY, payload, "image/png")

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stop.set()
    reader.join()

    assert seen
    assert all(data in payloads for data in seen)
    assert storage.get(KEY) in payloads
