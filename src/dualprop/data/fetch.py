"""Fetch official dataset files over HTTP and verify their md5 checksums.

A gzip file whose own digest differs from the official one is still accepted when its decompressed
bytes have the official content digest: distributions re-compress the archives (Debian does).

Files are written to a temporary name in the target directory and published with a hard link, so
a partial download is never visible under the final name and an existing file is never replaced.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import DataError
from .paths import data_root, find_dataset_dir
from .registry import Resource, get_spec

CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """Hex md5 digest of the file's bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gzip_content_md5(path: Path) -> str | None:
    """Hex md5 digest of the decompressed bytes of a gzip file; None when it is not valid gzip."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as file:
            for chunk in iter(lambda: file.read(CHUNK_BYTES), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def check_file(path: Path, md5: str | None, content_md5: str | None = None) -> None:
    """DataError unless the file's md5 is `md5` or (for gzip) its decompressed md5 is `content_md5`."""
    if md5 is None or (found := file_md5(path)) == md5:
        return
    if content_md5 is not None and gzip_content_md5(path) == content_md5:
        return
    expected = f"{md5}" + (f" (or decompressed contents with md5 {content_md5})" if content_md5 else "")
    raise DataError(f"{path}: md5 checksum is {found}, expected {expected}; delete the file to download it again")


def _open_url(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=60)


def _publish(source: BinaryIO, destination: Path, md5: str | None, origin: str) -> None:
    """Copy `source` to `destination` via a temporary file; DataError (and nothing written) on md5 mismatch."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as out:
            for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
                out.write(chunk)
                digest.update(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(f"{origin}: md5 checksum is {digest.hexdigest()}, expected {md5}")
        try:
            os.link(temporary, destination)
        except FileExistsError:
            pass  # someone else published it first; keep theirs
        except OSError:  # file system without hard links
            if not destination.exists():
                os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def fetch_verified(url: str, destination: Path, md5: str | None, content_md5: str | None = None) -> Path:
    """Download `url` to `destination` unless it exists; either way its md5 must equal `md5` (if known),
    or, for an existing gzip file, its decompressed md5 must equal `content_md5` (see :func:`check_file`)."""
    if destination.exists():
        check_file(destination, md5, content_md5)
        return destination
    try:
        with _open_url(url) as response:
            _publish(response, destination, md5, url)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise DataError(
            f"{url}: download failed ({error}); place {destination.name} in {destination.parent} by hand"
        ) from None
    return destination


def extract_members(archive: Path, directory: Path, members: tuple[str, ...]) -> None:
    """Extract the named regular files of a tar.gz into `directory`, skipping those already there."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in members:
                target = directory / member
                if target.exists():
                    continue
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataError(f"{archive}: expected member {member} is missing") from None
                source = tar.extractfile(info) if info.isfile() else None
                if source is None:
                    raise DataError(f"{archive}: member {member} is not a regular file")
                with source:
                    _publish(source, target, None, f"{archive}:{member}")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"{archive}: truncated or corrupt archive ({error})") from None


def download(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Fetch and verify the official files of dataset `name` into `<root>/<name>`; return the dataset directory.

    A dataset already complete (in our or torchvision's layout) is left untouched. Bundled datasets
    need nothing; datasets without a public URL raise DataError saying where to get the files.
    """
    spec = get_spec(name)
    try:
        return find_dataset_dir(spec, root)
    except DataError:
        if not spec.resources:
            raise
    directory = data_root(root) / spec.name
    for resource in spec.resources:
        _fetch_resource(resource, directory)
    return find_dataset_dir(spec, root)


def _fetch_resource(resource: Resource, directory: Path) -> None:
    if resource.members and all((directory / m).exists() for m in resource.members):
        return
    saved = fetch_verified(resource.url, directory / resource.filename, resource.md5, resource.content_md5)
    if resource.members:
        extract_members(saved, directory, resource.members)


def verify_dataset(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Check every official file of dataset `name` where the data root search finds it (see
    :func:`check_file`; an uncompressed copy of a '.gz' file is checked against `content_md5`);
    return the dataset directory, DataError naming the first file that differs."""
    spec = get_spec(name)
    directory = find_dataset_dir(spec, root)
    for resource in spec.resources:
        path = directory / resource.filename
        if path.exists():
            check_file(path, resource.md5, resource.content_md5)
        elif resource.content_md5 is not None and (plain := path.with_suffix("")).exists():
            if (found := file_md5(plain)) != resource.content_md5:
                raise DataError(f"{plain}: md5 checksum is {found}, expected {resource.content_md5}")
    return directory
