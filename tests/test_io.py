"""vclip.io: atomic writes keep the old file on failure, leave no temporary files, create parent
folders, and never let concurrent writers corrupt the target."""

import os
import threading

import pytest
import torch

from vclip import io as vio


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_text_and_bytes_content(tmp_path):
    p = vio.atomic_write_text(tmp_path / "a.txt", "héllo\r\nworld\n")
    assert p == tmp_path / "a.txt"
    assert p.read_bytes() == "héllo\r\nworld\n".encode()  # UTF-8, no newline translation
    vio.atomic_write_text(p, "replaced")
    assert p.read_text() == "replaced"
    q = vio.atomic_write_bytes(str(tmp_path / "b.bin"), b"\x00\xffdata")
    assert q.read_bytes() == b"\x00\xffdata"
    assert _leftovers(tmp_path) == []


def test_parent_folders_are_created(tmp_path):
    p = vio.atomic_write_text(tmp_path / "x" / "y" / "z.json", "{}")
    assert p.read_text() == "{}"
    with vio.atomic_write(tmp_path / "u" / "v.bin") as tmp:
        tmp.write_bytes(b"1")
    assert (tmp_path / "u" / "v.bin").read_bytes() == b"1"


def test_context_manager_writes_through_a_sibling_temp(tmp_path):
    target = tmp_path / "fig.png"
    with vio.atomic_write(target, suffix=".png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".fig.png.") and tmp.name.endswith(".tmp.png")
        assert str(os.getpid()) in tmp.name
        assert not target.exists()  # nothing under the final name before the block ends
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    assert _leftovers(tmp_path) == []


def test_failure_midway_keeps_the_old_target(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with vio.atomic_write(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the new cont")
                f.flush()
                assert target.read_text() == "old"
                raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failure_before_anything_is_written(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with vio.atomic_write(target):
            raise KeyboardInterrupt
    with pytest.raises(UnicodeEncodeError):  # the text cannot be encoded: nothing is touched
        vio.atomic_write_text(target, "\udcff")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_block_that_writes_nothing_is_an_error(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with vio.atomic_write(target):
            pass
    assert target.read_text() == "old"


def test_temp_names_are_unique(tmp_path):
    names = {vio.temp_path(tmp_path / "f").name for _ in range(1000)}
    assert len(names) == 1000


def test_concurrent_writers_never_corrupt_the_file(tmp_path):
    """Threads rewrite one file with large, distinct contents while a reader checks that it only
    ever sees one writer's complete content."""
    target = tmp_path / "shared.txt"
    contents = [chr(ord("a") + i) * 200_000 for i in range(8)]
    vio.atomic_write_text(target, contents[0])
    errors: list[str] = []
    stop = threading.Event()

    def write(text):
        try:
            for _ in range(15):
                vio.atomic_write_text(target, text)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    def read():
        while not stop.is_set():
            got = target.read_text()
            if got not in contents:
                errors.append(f"torn read: {len(got)} chars, starts {got[:3]!r}")

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(c,)) for c in contents]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert errors == []
    assert target.read_text() in contents
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_get_default_permissions_whatever_the_writer_used(tmp_path, umask):
    """A writer that creates its file 0600 (safetensors, tempfile) still leaves a file with the
    permissions of a plain open(): 0o666 minus the umask — read live, not cached."""
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        assert vio.default_file_mode() == 0o666 & ~umask
        with vio.atomic_write(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
        with vio.atomic_write(tmp_path / "x.bin") as tmp:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        vio.atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["w.safetensors", "x.bin", "plain.txt", "t.txt"], 0o666 & ~umask)


def test_sha256_file_equals_hashlib_across_chunks(tmp_path):
    import hashlib

    from vclip.io import sha256_file

    data = bytes(range(256)) * 1000  # 256,000 bytes: several chunks of 1,000 and a partial one
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
