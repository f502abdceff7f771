"""Filesystems for local paths and s3:// URIs: fsspec (s3fs for S3) for listings and small
files, pyarrow's native S3 client for Parquet (`arrow_fs`).

S3 endpoints and credentials come from the standard AWS environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles,
instance roles), read the same way by both clients; nothing here reaches the
network until a file is opened (except resolving a bucket's region for
`arrow_fs` when neither a region nor an endpoint is configured). Nothing here
creates a bucket (`_S3FileSystem`, `_S3ArrowFileSystem`); a storage failure
becomes a one-line `CionError` that says when credentials were refused and
carries no secret (`storage_error`, `redact`).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import posixpath
import re
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs
import s3fs

from cion_ray.errors import CionError

_S3_PROTOCOLS = ("s3://", "s3a://")

# Environment values that must never reach a log, report, written config or message.
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")

# S3 error codes that mean the credentials were refused, stale or missing.
_AUTH_CODES = {"403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
               "ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired",
               "InvalidSecurity", "RequestExpired", "UnrecognizedClientException"}
_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")
_TOKEN_CODES = {"ExpiredToken", "ExpiredTokenException", "InvalidToken", "TokenRefreshRequired"}
# pyarrow's S3 errors are plain OSErrors whose message carries the code:
# "... AWS Error ACCESS_DENIED during GetObject operation: ...", "AWS Error UNKNOWN (HTTP status 403) ...",
# and create_dir's "Bucket 'b' not found. To create buckets, ...".
_ARROW_CODE = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d+)\))?")
_ARROW_NO_BUCKET = re.compile(r"Bucket '[^']+' not found")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


# --- errors ------------------------------------------------------------------------------------

def redact(text: str) -> str:
    """`text` with the values of `SECRET_VARS` (those of 8 characters or more) replaced by ***."""
    for var in SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 8:
            text = text.replace(value, "***")
    return text


def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _s3_code(e: BaseException) -> str:
    """The S3 error code behind `e`, or '': s3fs keeps botocore's ClientError as the cause;
    pyarrow writes the code in upper snake case into the message (ACCESS_DENIED -> AccessDenied)."""
    for x in _chain(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict):
            err = resp.get("Error") or {}
            return str(err.get("Code") or (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode") or "")
    for x in _chain(e):
        m = _ARROW_CODE.search(str(x))
        if m and m.group(1) not in ("UNKNOWN", "CORE"):
            return "".join(w.capitalize() for w in m.group(1).split("_"))
        if m:
            return m.group(2) or ""
        if _ARROW_NO_BUCKET.search(str(x)):
            return "NoSuchBucket"
    return ""


def _auth_problem(e: BaseException) -> str | None:
    """What went wrong with the credentials, with a hint, when that is what `e` is about; else None."""
    if any(type(x).__name__ in _NO_CREDENTIALS for x in _chain(e)):
        return "no usable credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or use an instance role)"
    code = _s3_code(e)
    if code not in _AUTH_CODES and (code or not any(isinstance(x, PermissionError) for x in _chain(e))):
        return None
    what = "access denied" if code in ("", "403", "AccessDenied") else f"access denied, {code}"
    token = " / AWS_SESSION_TOKEN" if code in _TOKEN_CODES else ""
    return f"{what} (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY{token} or the instance role)"


def _bucket_uri(uri: str) -> str:
    proto, rest = str(uri).split("://", 1)
    return f"{proto}://{rest.split('/', 1)[0]}"


def storage_error(uri: str | Path, e: BaseException, doing: str) -> CionError:
    """One line for a failed storage operation on `uri`: refused credentials and a missing bucket
    say so; anything else reads `<uri>: <doing> (<reason>)`. Secrets are redacted."""
    uri = str(uri)
    if is_remote(uri):
        auth = _auth_problem(e)
        if auth:
            return CionError(redact(f"{uri}: {auth}"))
        if uri.startswith(_S3_PROTOCOLS) and (_s3_code(e) == "NoSuchBucket" or "no such bucket" in str(e)):
            return CionError(redact(f"{_bucket_uri(uri)}: no such bucket"))
    reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
    return CionError(redact(f"{uri}: {doing} ({reason})"))


# --- filesystems -------------------------------------------------------------------------------

class _S3FileSystem(s3fs.S3FileSystem):
    """s3fs that never creates a bucket. s3fs's mkdir / makedirs create a missing bucket, and
    pyarrow's create_dir (so Ray Data's write_parquet and Ray Train's storage) calls mkdir: a typo
    in an output URI created a bucket on the account. Objects need no folders, so mkdir here only
    checks that the bucket exists."""

    async def _mkdir(self, path, acl=False, create_parents=True, **kwargs):
        bucket, key, _ = self.split_path(self._strip_protocol(path).rstrip("/"))
        await self._check_bucket(bucket)
        if not key:
            raise FileExistsError(errno.EEXIST, f"s3://{bucket}: bucket exists")

    mkdir = s3fs.core.sync_wrapper(_mkdir)  # s3fs binds its own _mkdir here

    async def _check_bucket(self, bucket: str) -> None:
        """FileNotFoundError naming the bucket when it does not exist; other errors (credentials)
        propagate as s3fs raises them."""
        known = self.__dict__.setdefault("_buckets_seen", set())
        if bucket in known:
            return
        try:
            await self._call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"s3://{bucket}: no such bucket") from None
        known.add(bucket)

    check_bucket = s3fs.core.sync_wrapper(_check_bucket)


class _S3ArrowFileSystem(pafs.S3FileSystem):
    """pyarrow's native S3 filesystem (C++ reads and writes, ranges fetched in parallel) for
    Parquet. Like `_S3FileSystem`, create_dir only checks that the bucket exists: pyarrow's would
    also write empty "folder/" marker objects, which s3fs listings report as files (buckets are
    never created either way: allow_bucket_creation stays off)."""

    def create_dir(self, path, *, recursive=True):
        bucket = str(path).strip("/").split("/", 1)[0]
        if self.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, f"s3://{bucket}: no such bucket")

    def __reduce__(self):  # pyarrow's rebuilds the base class (Ray pickles the filesystem to workers)
        return _rebuild_s3_arrow, super().__reduce__()[1]


def _rebuild_s3_arrow(kwargs: dict) -> _S3ArrowFileSystem:
    return _S3ArrowFileSystem(**kwargs)


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None  # a missing bucket or no network: the first real request says so


# what decides botocore's configured region (HOME: where ~/.aws/config is)
_REGION_VARS = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "HOME")


@functools.lru_cache(maxsize=16)
def _config_region(env: tuple) -> str | None:
    """botocore's configured region for one environment (`env`: the values of _REGION_VARS).
    A botocore session reads the config files: 10-25 ms, once per arrow_fs call without this."""
    import botocore.session

    return botocore.session.get_session().get_config_variable("region")


def _arrow_s3_options(bucket: str) -> dict:
    """S3FileSystem settings matching the s3fs `get_fs` builds: the same endpoint (its scheme
    too, so http endpoints work), botocore's region (AWS_DEFAULT_REGION, the profile), credentials
    from the AWS SDK's default chain (environment, profile, instance role; never written into
    the options, so none are pickled)."""
    # botocore's (so s3fs's) 60 s timeouts: the SDK's default gives up on a request that moves no
    # byte for 3 s, which a busy endpoint or a loaded worker trips
    opts: dict = {"connect_timeout": 60.0, "request_timeout": 60.0}
    endpoint = _s3_endpoint()
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["scheme"] = parts.scheme
        opts["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
    region = _config_region(tuple(os.environ.get(k, "") for k in _REGION_VARS))
    if not region and not endpoint:
        region = _bucket_region(bucket)  # AWS answers from the wrong region with a redirect pyarrow does not follow
    if region:
        opts["region"] = region
    return opts


@functools.lru_cache(maxsize=16)
def _s3_arrow(options: tuple, env: int) -> _S3ArrowFileSystem:
    """One client per settings (and credentials environment, `env` a hash): building one starts the SDK's
    credential chain, which may probe the instance metadata service."""
    return _S3ArrowFileSystem(**dict(options))


def _storage_options(uri: str) -> dict:
    if str(uri).startswith(_S3_PROTOCOLS):
        opts: dict = {}
        endpoint = _s3_endpoint()
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
        return opts
    return {}


def get_fs(uri: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    uri = str(uri)
    if uri.startswith(_S3_PROTOCOLS):
        s3 = _S3FileSystem(**_storage_options(uri))
        return s3, s3._strip_protocol(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **_storage_options(uri))
    except (ImportError, ValueError) as e:
        raise CionError(f"{uri}: unsupported location ({e})") from None
    if not is_remote(uri):
        path = os.path.abspath(path)
    return fs, path


def arrow_fs(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (for Parquet and Ray Data) and the path inside it: pyarrow's native
    S3 client for s3:// (`_S3ArrowFileSystem`), fsspec wrapped for other remote stores."""
    uri = str(uri)
    if uri.startswith(_S3_PROTOCOLS):
        path = s3fs.S3FileSystem._strip_protocol(uri)
        env = hash(tuple(os.environ.get(k, "") for k in SECRET_VARS[:3] + ("AWS_PROFILE",)))
        opts = _arrow_s3_options(path.split("/", 1)[0])
        return _s3_arrow(tuple(sorted(opts.items())), env), path
    fs, path = get_fs(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str | Path, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def check_output(uri: str | Path) -> None:
    """Fail before any work when `uri` cannot take a stage's output: a local folder is created and
    write-tested; an s3:// prefix needs an existing bucket (never created) that accepts the
    credentials. CionError: "s3://bucket: no such bucket", "...: access denied; check ...", ..."""
    uri = str(uri)
    if not is_remote(uri):
        makedirs(uri)
        return
    fs, _ = get_fs(uri)
    if not isinstance(fs, _S3FileSystem):
        return  # other object stores: their own errors on first write
    bucket = _bucket_uri(uri)
    try:
        fs.check_bucket(bucket.split("://", 1)[1])
    except FileNotFoundError:
        raise CionError(f"{bucket}: no such bucket") from None
    except Exception as e:
        raise storage_error(uri, e, "cannot check") from None


def exists(uri: str | Path) -> bool:
    fs, path = get_fs(uri)
    try:
        return fs.exists(path)
    except Exception as e:  # network / permission problems are the user's to see
        raise storage_error(uri, e, "cannot check") from None


def read_bytes(uri: str | Path) -> bytes:
    fs, path = get_fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise storage_error(uri, e, "cannot read") from None


def read_text(uri: str | Path) -> str:
    try:
        return read_bytes(uri).decode()
    except UnicodeDecodeError as e:
        raise CionError(f"{uri}: not text ({e})") from None


def write_bytes_atomic(uri: str | Path, data: bytes) -> None:
    """Write a whole object, which appears whole or not at all (open_output_atomic)."""
    try:
        with open_output_atomic(uri) as f:
            f.write(data)
    except CionError:
        raise
    except Exception as e:  # OSError locally; s3fs / botocore errors remotely
        raise storage_error(uri, e, "cannot write") from None


@contextlib.contextmanager
def open_output_atomic(uri: str | Path):
    """A binary stream whose content appears at `uri` whole, once the block ends without an
    error: a local file is written beside then renamed; an S3 upload becomes visible only when
    it completes (a failed one is aborted)."""
    fs, path = get_fs(uri)
    if is_remote(str(uri)):
        try:
            f = fs.open(path, "wb")
        except Exception as e:
            raise storage_error(uri, e, "cannot write") from None
        try:
            yield f
        except BaseException:
            if hasattr(f, "discard"):  # fsspec's buffered files: abort the multipart upload
                f.discard()
            raise
        try:
            f.close()
        except Exception as e:
            raise storage_error(uri, e, "cannot write") from None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.partial")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(uri: str | Path, obj) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(uri: str | Path):
    try:
        return json.loads(read_text(uri))
    except json.JSONDecodeError as e:
        raise CionError(f"{uri}: not valid JSON ({e})") from None


def makedirs(uri: str | Path) -> None:
    """Create a local folder and check it is writable; for s3:// check the bucket (`check_output`)."""
    fs, path = get_fs(uri)
    if is_remote(str(uri)):
        check_output(uri)  # object stores have no folders; the bucket must exist
        return
    try:
        fs.makedirs(path, exist_ok=True)
        probe = Path(path) / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CionError(f"{uri}: not writable ({e.strerror or e})") from None


def remove_tree(uri: str | Path) -> None:
    fs, path = get_fs(uri)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise storage_error(uri, e, "cannot remove") from None


def list_files(uri: str | Path, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under `uri` (recursive), as URIs of the same kind, sorted."""
    fs, path = get_fs(uri)
    try:
        if not fs.exists(path):
            raise CionError(f"{uri}: not found")
        if fs.isfile(path):
            found = [path]
        else:
            # "folder/" keys are directory markers (pyarrow's copy_files writes them), not files
            found = [p for p in fs.find(path) if not posixpath.basename(p).startswith(".")
                     and not p.endswith("/")]
    except CionError:
        raise
    except Exception as e:
        raise storage_error(uri, e, "cannot list") from None
    if suffixes:
        found = [p for p in found if p.lower().endswith(suffixes)]
    if is_remote(str(uri)):
        proto = str(uri).split("://", 1)[0]
        return sorted(f"{proto}://{p.lstrip('/')}" for p in found)
    return sorted(found)


def open_input(uri: str | Path):
    """A binary file object for reading (PyAV and pyarrow accept it)."""
    fs, path = get_fs(uri)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise storage_error(uri, e, "cannot open") from None


def local_copy(uri: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local path for `uri`: itself when local, else a cached download (for model weights)."""
    if not is_remote(str(uri)):
        p = Path(str(uri)).expanduser()
        if not p.exists():
            raise CionError(f"{uri}: not found")
        return p
    cache = Path(cache_dir or Path.home() / ".cache" / "cion-ray" / "downloads")
    cache.mkdir(parents=True, exist_ok=True)
    fs, path = get_fs(uri)
    try:
        info = fs.info(path)
        tag = str(info.get("ETag") or info.get("etag") or info.get("size", "")).strip('"')
        dest = cache / f"{tag}-{posixpath.basename(path)}"
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.partial")
            fs.get(path, str(tmp))
            os.replace(tmp, dest)
    except FileNotFoundError:
        raise CionError(f"{uri}: not found") from None
    except Exception as e:
        raise storage_error(uri, e, "cannot read") from None
    return dest
