"""Dataset registry, data-directory resolution (ours and torchvision's layouts) and verified downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

import dualprop.data.fetch as fetch_module
import dualprop.data.paths as paths_module
from dualprop.data import (
    DataError,
    Resource,
    data_root,
    data_roots,
    download,
    fetch_verified,
    file_md5,
    find_dataset_dir,
    get_spec,
    verify_dataset,
)
from dualprop.data.fetch import extract_members


def write_idx_set(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shapes = {
        "train-images-idx3-ubyte": (2, 28, 28),
        "train-labels-idx1-ubyte": (2,),
        "t10k-images-idx3-ubyte": (1, 28, 28),
        "t10k-labels-idx1-ubyte": (1,),
    }
    for name, shape in shapes.items():
        header = struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
        (directory / f"{name}.gz").write_bytes(gzip.compress(header + bytes(int(np.prod(shape)))))


def test_unknown_name_lists_known_names() -> None:
    known = "mnist, fashion-mnist, cifar10, cifar100, svhn, imagenet32, digits"
    with pytest.raises(ValueError, match=f"unknown dataset 'imagenet'.*{known}"):
        get_spec("imagenet")
    assert get_spec("Fashion_MNIST").name == "fashion-mnist"


def test_registry_entries_are_consistent() -> None:
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagenet32", "digits"):
        spec = get_spec(name)
        assert len(spec.mean) == len(spec.std) == spec.input_shape[0]
        assert all(len(r.md5) == 32 for r in spec.resources if r.md5)
    assert get_spec("cifar100").num_classes == 100 and get_spec("imagenet32").num_classes == 1000


def test_data_root_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUALPROP_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("DUALPROP_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "dualprop"


def test_search_order_ends_at_the_system_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paths_module, "SYSTEM_DATA_ROOT", tmp_path / "system")
    monkeypatch.setenv("DUALPROP_DATA", str(tmp_path / "env"))
    cache = tmp_path / "home" / ".cache" / "dualprop"
    assert data_roots() == [tmp_path / "env", cache, tmp_path / "system"]
    assert data_roots(tmp_path / "explicit") == [tmp_path / "explicit"]
    spec = get_spec("fashion-mnist")
    with pytest.raises(DataError, match="searched .*env, .*cache/dualprop, .*system; .*dataset-fashion-mnist"):
        find_dataset_dir(spec)
    write_idx_set(tmp_path / "system" / "fashion-mnist")
    assert find_dataset_dir(spec) == tmp_path / "system" / "fashion-mnist"
    write_idx_set(cache / "fashion-mnist")  # an earlier root wins
    assert find_dataset_dir(spec) == cache / "fashion-mnist"
    with pytest.raises(DataError):  # an explicit root is the only one searched
        find_dataset_dir(spec, tmp_path / "explicit")


def test_recompressed_gzip_is_checked_by_its_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = bytes(range(256)) * 400
    official = gzip.compress(content, compresslevel=1, mtime=0)
    recompressed = gzip.compress(content, compresslevel=9, mtime=12345)
    assert official != recompressed
    requested = serve(monkeypatch, official)
    target = tmp_path / "file.gz"
    target.write_bytes(recompressed)
    md5, content_md5 = hashlib.md5(official).hexdigest(), hashlib.md5(content).hexdigest()
    assert fetch_verified("https://example.invalid/file.gz", target, md5, content_md5) == target
    assert requested == [] and target.read_bytes() == recompressed
    target.write_bytes(gzip.compress(content[:-1]))
    with pytest.raises(DataError, match=f"expected {md5} \\(or decompressed contents with md5 {content_md5}\\)"):
        fetch_verified("https://example.invalid/file.gz", target, md5, content_md5)


def test_verify_dataset_names_the_file_that_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx_set(tmp_path / "fashion-mnist")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: md5 checksum is .*expected 8d4fb7e6"):
        verify_dataset("fashion-mnist", tmp_path)
    resources = tuple(
        Resource(
            r.url, r.filename, r.md5, content_md5=fetch_module.gzip_content_md5(tmp_path / "fashion-mnist" / r.filename)
        )
        for r in get_spec("fashion-mnist").resources
    )
    spec = dataclasses.replace(get_spec("fashion-mnist"), resources=resources)
    monkeypatch.setattr(fetch_module, "get_spec", lambda name: spec)
    assert verify_dataset("fashion-mnist", tmp_path) == tmp_path / "fashion-mnist"
    plain = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(plain.with_suffix(".gz").read_bytes()) + b"x")
    plain.with_suffix(".gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: md5 checksum"):
        verify_dataset("fashion-mnist", tmp_path)


def test_our_layout_and_uncompressed_idx(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "mnist")
    assert find_dataset_dir(get_spec("mnist"), tmp_path) == tmp_path / "mnist"
    gz = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert find_dataset_dir(get_spec("mnist"), tmp_path) == tmp_path / "mnist"


@pytest.mark.parametrize("name, subdir", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_torchvision_idx_layout(tmp_path: Path, name: str, subdir: str) -> None:
    write_idx_set(tmp_path / subdir)
    assert find_dataset_dir(get_spec(name), tmp_path) == tmp_path / subdir


def test_torchvision_cifar_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"")
    assert find_dataset_dir(get_spec("cifar10"), tmp_path) == tmp_path / "."


def test_missing_files_say_what_to_place_where(tmp_path: Path) -> None:
    (tmp_path / "svhn").mkdir()
    (tmp_path / "svhn" / "train_32x32.mat").write_bytes(b"")
    with pytest.raises(DataError) as caught:
        find_dataset_dir(get_spec("svhn"), tmp_path)
    message = str(caught.value)
    assert f"missing {tmp_path / 'svhn' / 'test_32x32.mat'};" in message
    assert f"in {tmp_path / 'svhn'}" in message
    assert "http://ufldl.stanford.edu/housenumbers/test_32x32.mat" in message


def test_file_md5_matches_rfc1321_vector(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"


def serve(monkeypatch: pytest.MonkeyPatch, content: bytes) -> list[str]:
    requested: list[str] = []

    def fake_open(url: str) -> io.BytesIO:
        requested.append(url)
        return io.BytesIO(content)

    monkeypatch.setattr(fetch_module, "_open_url", fake_open)
    return requested


def test_fetch_verified_writes_matching_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = bytes(range(256)) * 10000
    serve(monkeypatch, content)
    target = tmp_path / "d" / "file.bin"
    fetch_verified("https://example.invalid/file.bin", target, hashlib.md5(content).hexdigest())
    assert target.read_bytes() == content
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_fetch_verified_rejects_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, b"tampered")
    target = tmp_path / "file.bin"
    with pytest.raises(DataError, match=f"md5 checksum is {hashlib.md5(b'tampered').hexdigest()}, expected 0+"):
        fetch_verified("https://example.invalid/file.bin", target, "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_fetch_verified_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = serve(monkeypatch, b"new")
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    fetch_verified("https://example.invalid/file.bin", target, None)
    assert target.read_bytes() == b"old" and requested == []
    with pytest.raises(DataError, match="file.bin: md5 checksum is .*delete the file"):
        fetch_verified("https://example.invalid/file.bin", target, hashlib.md5(b"new").hexdigest())
    assert target.read_bytes() == b"old"


def test_download_checks_official_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = serve(monkeypatch, b"not the mnist file")
    official = "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.gz: md5 checksum is .*{official}"):
        download("mnist", tmp_path)
    assert requested == ["https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"]
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_leaves_complete_dataset_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requested = serve(monkeypatch, b"")
    write_idx_set(tmp_path / "MNIST" / "raw")
    assert download("mnist", tmp_path) == tmp_path / "MNIST" / "raw" and requested == []


def test_download_without_public_url_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image-net.org"):
        download("imagenet32", tmp_path)


def test_extract_members_takes_only_listed_files(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("cifar-10-batches-py/test_batch", b"batch"), ("../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    extract_members(archive, out, ("cifar-10-batches-py/test_batch",))
    assert (out / "cifar-10-batches-py" / "test_batch").read_bytes() == b"batch"
    assert not (tmp_path / "escape").exists()
    with pytest.raises(DataError, match="a.tar.gz: expected member cifar-10-batches-py/data_batch_1 is missing"):
        extract_members(archive, out, ("cifar-10-batches-py/data_batch_1",))
