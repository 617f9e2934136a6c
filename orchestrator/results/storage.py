"""Where results live: one location (``--out``) opened as one :class:`Storage`.

A location is a local path (``results``, ``~/exp``, ``file:///abs/exp``), an object-store URI
(``s3://bucket/prefix``, ``gs://bucket/prefix``), any other URI :func:`pyarrow.fs.FileSystem.from_uri`
or fsspec knows, or — from the Python API — a ``(filesystem, path)`` pair whose filesystem is a
:class:`pyarrow.fs.FileSystem` or an fsspec filesystem (wrapped with
``PyFileSystem(FSSpecHandler(...))``). Every read and write of results, checkpoints, leases
and search state goes through :class:`Storage`, and Ray Train / Tune get the same filesystem
(:meth:`Storage.ray_storage`).

Atomicity, the one guarantee readers rely on (a file appears whole or not at all):

* local paths keep the classic way: write a hidden temporary ``.<name>.<pid>.<random>.tmp``
  next to the target, then ``os.replace`` it into place (the pid lets a restarted run remove
  the temporaries of a killed writer);
* object stores have no rename, but an object becomes visible only when its upload completes:
  each file is sent as one PUT of bytes built in memory (``allow_delayed_open`` makes
  pyarrow's S3 stream a single ``PutObject`` for a buffer written at once), so a killed writer
  leaves the old object or none, never a partial one, and there are no temporaries.

S3 is configured like the AWS tools: credentials from ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/`` files or
instance metadata (the AWS SDK's default chain, which pyarrow uses); the endpoint from
:class:`~orchestrator.config.StorageConfig` ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``,
else ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto: ``http://host:port``); the region likewise from
``region``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else ``us-east-1``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from orchestrator.config import ConfigError, StorageConfig, experiment_from_dict

#: pyarrow filesystems (``type_name``) of object stores: keys, no directories to create
OBJECT_FS = ("s3", "gcs")
_AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class Storage:
    """A filesystem and a base path in it; every method takes paths relative to the base
    (``"runs/x.parquet"``). ``local`` storage works on the OS paths directly."""

    def __init__(self, fs: pafs.FileSystem, base: str, uri: str, local: bool,
                 options: StorageConfig | None = None) -> None:
        self.fs, self.base, self.uri, self.local = fs, base.rstrip("/") or base, uri, local
        self.options = options or StorageConfig()

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def path(self, rel: str = "") -> str:
        """The path of ``rel`` inside the filesystem (an OS path for local storage)."""
        return f"{self.base}/{rel}" if rel else self.base

    def show(self, rel: str = "") -> str:
        """``rel`` as the user would write it: a local path or ``scheme://.../rel``."""
        return self.path(rel) if self.local else (f"{self.uri}/{rel}" if rel else self.uri)

    # -- reading --------------------------------------------------------------------------
    def kind(self, rel: str) -> str | None:
        """``"file"``, ``"dir"`` or None (missing)."""
        if self.local:
            p = Path(self.path(rel))
            return "dir" if p.is_dir() else "file" if p.exists() or p.is_symlink() else None
        t = self.fs.get_file_info(self.path(rel)).type
        return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(t)

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; ``FileNotFoundError`` if there is none."""
        if self.local:
            return Path(self.path(rel)).read_bytes()
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if self.kind(rel) is None:
                raise FileNotFoundError(self.show(rel)) from e
            raise

    def files(self, rel: str, recursive: bool = True) -> list[str]:
        """The files under ``rel`` (relative paths, sorted); hidden names included."""
        base = self.path(rel)
        if self.local:
            d = Path(base)
            if not d.is_dir():
                return []
            found = d.rglob("*") if recursive else d.iterdir()
            return sorted(f"{rel}/{p.relative_to(d).as_posix()}" for p in found if p.is_file())
        sel = pafs.FileSelector(base, allow_not_found=True, recursive=recursive)
        return sorted(f"{rel}/{i.path[len(base) + 1:]}" for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File)

    def children(self, rel: str) -> list[str]:
        """The names directly under ``rel`` (files and directories), sorted."""
        if self.local:
            d = Path(self.path(rel))
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def at(self, rel: str) -> Path | str:
        """``rel`` as callers hold locations: a :class:`~pathlib.Path` for local storage,
        else its URI."""
        return Path(self.path(rel)) if self.local else self.show(rel)

    def dataset_source(self, rels: list[str]) -> tuple[list[str], pafs.FileSystem | None]:
        """(paths, filesystem) for :func:`pyarrow.dataset.dataset` over files ``rels``."""
        return [self.path(r) for r in rels], (None if self.local else self.fs)

    # -- writing --------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, backup: str | None = None) -> None:
        """Write ``data`` to ``rel`` atomically (see the module docstring); with ``backup``
        the file ``rel`` held before is kept there (checkpoints keep the previous one)."""
        if not self.local:
            if self.fs.type_name not in OBJECT_FS:  # a real directory tree needs its parents
                self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
            if backup is not None and self.kind(rel) == "file":
                self.fs.copy_file(self.path(rel), self.path(backup))
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)  # one PutObject of the whole buffer
            return
        path = Path(self.path(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = (path.parent / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
                    for name in (path.name, Path(self.path(backup or rel)).name))
        try:
            tmp.write_bytes(data)
            if backup is not None and path.is_file():
                # the backup is a second link to the current file, so ``rel`` exists at every
                # moment (a signal between two renames would otherwise leave none)
                _link_or_copy(path, old)
                os.replace(old, self.path(backup))
            os.replace(tmp, path)
        finally:
            for t in (tmp, old):
                if t.exists():
                    t.unlink()

    def delete(self, rel: str) -> None:
        """Remove ``rel`` whatever it is (file, directory tree, dangling link); no error if
        it is missing."""
        if self.local:
            p = Path(self.path(rel))
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            return
        kind = self.kind(rel)
        if kind == "dir":
            self.fs.delete_dir(self.path(rel))
        elif kind == "file":
            self.fs.delete_file(self.path(rel))

    def ray_storage(self, rel: str) -> tuple[str, pafs.FileSystem | None]:
        """(``storage_path``, ``storage_filesystem``) for Ray Train / Tune's ``RunConfig``:
        the same filesystem as the results, so Ray's own files land beside them."""
        return (self.path(rel), None) if self.local else (self.path(rel), self.fs)

    def probe(self) -> None:
        """Write and delete a small hidden object: raises ``OSError`` if this location is
        not reachable and writable."""
        rel = f".mtlx-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if self.local:
            Path(self.base).mkdir(parents=True, exist_ok=True)
        self.write_bytes(rel, b"")
        self.delete(rel)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


def open_storage(location: Any, options: StorageConfig | Mapping[str, Any] | None = None
                 ) -> Storage:
    """The :class:`Storage` of ``location`` (see the module docstring for what it may be);
    ``ConfigError`` for a location no filesystem handles."""
    if isinstance(location, Storage):
        return location
    opts = _options(options)
    if isinstance(location, tuple) and len(location) == 2:
        fs, path = location
        return Storage(_as_arrow(fs), str(path), f"{_scheme_of(fs)}://{path}", False, opts)
    text = os.fspath(location)
    scheme = urlparse(text).scheme if "://" in text else ""
    if scheme in ("", "file"):
        local = urlparse(text).path if scheme else text
        p = str(Path(local).expanduser().resolve())
        return Storage(pafs.LocalFileSystem(), p, p, True, opts)
    rest = text.split("://", 1)[1].strip("/")
    if not rest:
        raise ConfigError(f"location {text!r} names no bucket; fix: {scheme}://BUCKET/PREFIX")
    uri = f"{scheme}://{rest}"
    if scheme == "s3":
        return Storage(s3_filesystem(opts), rest, uri, False, opts)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        fs, path = _fsspec(scheme, rest, e)
    return Storage(fs, path, uri, False, opts)


def is_local(location: Any) -> bool:
    """Whether ``location`` is a local path (or ``file://``), without building anything."""
    if isinstance(location, Storage):
        return location.local
    if isinstance(location, tuple):
        return False
    text = os.fspath(location)
    return "://" not in text or text.startswith("file://")


def resolve_location(location: str) -> str:
    """A location as it travels to Ray workers: a local path made absolute (workers change
    directory), ``file://`` turned into that path, a URI normalised (no trailing ``/``)."""
    s = open_storage(location) if is_local(location) else None
    if s is not None:
        return s.base
    scheme, rest = location.split("://", 1)
    return f"{scheme}://{rest.strip('/')}"


def _options(options: StorageConfig | Mapping[str, Any] | None) -> StorageConfig:
    if options is None or isinstance(options, StorageConfig):
        return options or StorageConfig()
    return experiment_from_dict({"storage": dict(options)}).storage  # typed, keys checked


def _as_arrow(fs: Any) -> pafs.FileSystem:
    if isinstance(fs, pafs.FileSystem):
        return fs
    if hasattr(fs, "protocol") and hasattr(fs, "open"):  # an fsspec filesystem
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    raise ConfigError(f"{type(fs).__name__} is not a pyarrow.fs.FileSystem or an fsspec "
                      "filesystem; fix: pass one of those with a path, (fs, 'bucket/prefix')")


def _scheme_of(fs: Any) -> str:
    protocol = getattr(fs, "protocol", None) or getattr(fs, "type_name", "fs")
    return protocol[0] if isinstance(protocol, (tuple, list)) else str(protocol)


def _fsspec(scheme: str, rest: str, arrow_error: BaseException) -> tuple[pafs.FileSystem, str]:
    try:
        import fsspec

        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"no filesystem for {scheme}:// (pyarrow: {arrow_error}; fsspec: "
                          f"{e}); fix: --out a local path, s3://, gs://, or install the fsspec "
                          f"package for {scheme}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), rest


# ---------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------


def _first(opts_value: str | None, option: str, env: tuple[str, ...], default: str | None
           ) -> tuple[str | None, str]:
    """(value, where it came from): the option, else the first set variable, else default."""
    if opts_value:
        return opts_value, f"storage.{option}"
    for var in env:
        if os.environ.get(var):
            return os.environ[var], var
    return default, "default"


def s3_settings(opts: StorageConfig) -> dict[str, Any]:
    """The endpoint and region S3 is reached with (options first, then the environment) and
    where each came from: ``{"endpoint", "endpoint_from", "region", "region_from"}``."""
    endpoint, endpoint_from = _first(opts.endpoint_url, "endpoint_url",
                                     ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), None)
    region, region_from = _first(opts.region, "region", ("AWS_REGION", "AWS_DEFAULT_REGION"),
                                 "us-east-1")
    return {"endpoint": endpoint, "endpoint_from": endpoint_from, "region": region,
            "region_from": region_from}


def resolve_options(location: str, opts: StorageConfig) -> StorageConfig:
    """``opts`` with the endpoint and region of an ``s3://`` location fixed from this
    process's environment, so Ray workers on other nodes reach the same server even if their
    environment lacks those variables (credentials are never copied into the config)."""
    if not location.startswith("s3://"):
        return opts
    s = s3_settings(opts)
    return dataclasses.replace(opts, endpoint_url=s["endpoint"], region=s["region"])


def credentials_source(opts: StorageConfig) -> str | None:
    """Where the AWS SDK will find credentials, in its order; None if nowhere but instance
    metadata (which only exists on cloud machines)."""
    if opts.anonymous:
        return "none (storage.anonymous: unsigned requests)"
    if all(os.environ.get(v) for v in _AWS_CREDENTIAL_VARS):
        return "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"]
    for f in files:
        if Path(f).expanduser().is_file():
            return f"profile {os.environ.get('AWS_PROFILE', 'default')!r} in {f}"
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI") or os.environ.get(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return "web identity / container credentials (environment)"
    return None


def worker_env(location: str, opts: StorageConfig) -> dict[str, str]:
    """The environment variables a Ray worker needs to reach ``location`` beyond what the run
    carries (its endpoint and region are in ``RunConfig.storage``): this process's AWS
    credential variables, for an ``s3://`` location with ``forward_credentials``; else {}."""
    if not (location.startswith("s3://") and opts.forward_credentials):
        return {}
    names = (*_AWS_CREDENTIAL_ENV[:4], "AWS_EC2_METADATA_DISABLED", "AWS_CA_BUNDLE")
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def runtime_env(location: str, opts: StorageConfig) -> dict[str, Any] | None:
    """A Ray ``runtime_env`` with :func:`worker_env`, None when there is nothing to pass."""
    env = worker_env(location, opts)
    return {"env_vars": env} if env else None


def s3_filesystem(opts: StorageConfig) -> pafs.S3FileSystem:
    """An :class:`pyarrow.fs.S3FileSystem` from ``opts`` and the environment (see the module
    docstring); cached per settings, so building stores is cheap."""
    s = s3_settings(opts)
    env = tuple(os.environ.get(v) for v in _AWS_CREDENTIAL_ENV)  # credentials are read once
    return _s3(s["endpoint"], s["region"], dataclasses.astuple(opts), env)


#: environment variables the AWS SDK reads credentials from (part of the cache key)
_AWS_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                       "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "HOME")


@functools.lru_cache(maxsize=16)
def _s3(endpoint: str | None, region: str, opts_key: tuple[Any, ...],
        _env: tuple[str | None, ...]) -> pafs.S3FileSystem:
    opts = StorageConfig(*opts_key)
    kwargs: dict[str, Any] = {"region": region, "anonymous": opts.anonymous,
                              "allow_delayed_open": True,
                              "force_virtual_addressing": opts.force_virtual_addressing,
                              "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                                  max_attempts=opts.retry_attempts)}
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=u.netloc + u.path.rstrip("/"), scheme=u.scheme)
    if opts.connect_timeout is not None:
        kwargs["connect_timeout"] = opts.connect_timeout
    if opts.request_timeout is not None:
        kwargs["request_timeout"] = opts.request_timeout
    return pafs.S3FileSystem(**kwargs)


# ---------------------------------------------------------------------------------------
# checking a location before anything runs
# ---------------------------------------------------------------------------------------

#: where the AWS SDK looks for credentials, in its order (for "none found" messages)
CREDENTIALS_TRIED = ("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", "AWS_PROFILE in "
                     "~/.aws/credentials and ~/.aws/config", "web identity / container "
                     "variables", "instance metadata")


def check_reachable(location: str, opts: StorageConfig, flag: str = "--out") -> Storage:
    """Open ``location`` and write + delete a probe object there; ``ConfigError`` whose
    first line says what failed (no credentials, unknown bucket, endpoint refused, access
    denied), naming the URI, the endpoint, the credentials source and the fix."""
    storage = open_storage(location, opts)
    try:
        storage.probe()
        return storage
    except OSError as e:
        raise ConfigError(_unreachable(storage, e, flag)) from None


def _unreachable(storage: Storage, e: OSError, flag: str) -> str:
    text, uri = str(e), storage.uri
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    where, creds = f"{uri} through {type(storage.fs).__name__}", None
    if uri.startswith("s3://"):
        s = s3_settings(storage.options)
        creds = credentials_source(storage.options)
        endpoint = s["endpoint"] or f"AWS S3 ({s['region']})"
        where = (f"endpoint {endpoint} (from {s['endpoint_from']}), region {s['region']} "
                 f"(from {s['region_from']}), credentials: "
                 f"{creds or 'none found (tried ' + ', '.join(CREDENTIALS_TRIED) + ')'}")
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper.replace(" ", ""):
        what = f"bucket {bucket!r} does not exist"
        fix = f"create it (e.g. `aws s3 mb s3://{bucket}`) or {flag} an existing bucket"
    elif "NETWORK_CONNECTION" in upper or "COULD NOT CONNECT" in upper or "CURLCODE" in upper:
        what = "cannot connect to the storage endpoint"
        fix = ("start the server, or point storage.endpoint_url (or AWS_ENDPOINT_URL) at a "
               "running one")
    elif creds is None and uri.startswith("s3://"):
        what = "no S3 credentials found"
        fix = ("export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or "
               "storage.anonymous=true for a public bucket")
    elif any(k in upper for k in ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY",
                                  "SIGNATURE", "FORBIDDEN", "403")):
        what = "access denied"
        fix = "check the credentials and that they may write to this bucket"
    else:
        what = "it cannot be written"
        fix = f"check the location, the endpoint and the credentials, or {flag} a local path"
    reason = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return (f"{flag} {uri!r} cannot be used: {what}; tried {where}; fix: {fix} "
            f"(storage said: {reason})")
