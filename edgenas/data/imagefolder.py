"""Image folders (``train/<class>/*`` and ``test/<class>/*``, as a directory or a ``.tar``/``.tar.gz``):
listed, decoded once, and the decoded arrays cached on disk (``$EDGENAS_CACHE_DIR`` or
``~/.cache/edgenas``), keyed by the source's path, size and modification time."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
import warnings
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from edgenas.data.sources import Raw
from edgenas.errors import EdgenasError
from edgenas.files import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CACHE_VERSION = 1
# Beyond this many decoded bytes the in-memory design stops being reasonable (ImageNet-sized folders).
MAX_DECODED_BYTES = 12 * 2**30


def cache_dir() -> Path:
    if "EDGENAS_CACHE_DIR" in os.environ:
        return Path(os.environ["EDGENAS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgenas"


def _source_key(path: Path, image_size: int | None) -> str:
    """Cache key: the resolved path and, for a folder, every file's size and mtime."""
    st = path.stat()
    parts = [str(path.resolve()), str(CACHE_VERSION), str(image_size)]
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                fs = f.stat()
                parts.append(f"{f.relative_to(path)}:{fs.st_size}:{fs.st_mtime_ns}")
    else:
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def load_imagefolder(path: Path, image_size: int | None, info: dict[str, Any]) -> Raw:
    if not path.exists():
        raise EdgenasError(f"dataset path {path} does not exist",
                           "pass imagefolder:PATH with a folder holding train/ and test/, or a .tar/.tar.gz")
    key = _source_key(path, image_size)
    cache = cache_dir() / f"imagefolder-{key}.pt"
    if cache.is_file():
        try:
            doc = torch.load(cache, weights_only=True)
            info.update({"cache": str(cache), "cache_hit": True})
            return ((doc["train_x"], doc["train_y"]), (doc["test_x"], doc["test_y"]), list(doc["classes"]))
        except Exception:  # a damaged cache is only a cache: decode again below
            cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    files = _list_tar(path) if path.is_file() else _list_dir(path)
    raw = _decode_folder(path, files, image_size)
    info.update({"decode_s": round(time.perf_counter() - t0, 3), "cache_hit": False})
    (xtr, ytr), (xte, yte), classes = raw
    try:
        with atomic_path(cache) as tmp:
            torch.save({"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte, "classes": list(classes)},
                       tmp)
        info["cache"] = str(cache)
    except (OSError, EdgenasError) as e:  # no writable cache: still works, only slower next time
        info["cache"] = f"not written: {e}"
    return raw


# (split, class, name) -> a way to read the bytes
FileList = dict[tuple[str, str], list[tuple[str, Any]]]


def _split_parts(rel: PurePosixPath) -> tuple[str, str, str] | None:
    """``train/<class>/<file>`` (optionally under one top folder) -> (split, class, file)."""
    parts = rel.parts
    for i, p in enumerate(parts[:-2]):
        if p in ("train", "test") and len(parts) - i == 3:
            return p, parts[i + 1], parts[-1]
    return None


def _list_dir(root: Path) -> FileList:
    files: FileList = {}
    tops = [root] + [d for d in sorted(root.iterdir()) if d.is_dir()]
    base = next((t for t in tops if (t / "train").is_dir() and (t / "test").is_dir()), None)
    if base is None:
        raise EdgenasError(f"{root} does not hold train/ and test/ folders",
                           "lay it out as train/<class>/* and test/<class>/*")
    for split in ("train", "test"):
        for cdir in sorted(d for d in (base / split).iterdir() if d.is_dir()):
            images = sorted(f for f in cdir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            files[(split, cdir.name)] = [(str(f), f) for f in images]
    return files


def _list_tar(path: Path) -> FileList:
    files: FileList = {}
    dirs: set[tuple[str, str]] = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                rel = PurePosixPath(m.name.lstrip("./") or ".")
                if m.isdir():
                    parts = rel.parts
                    if len(parts) >= 2 and parts[-2] in ("train", "test"):
                        dirs.add((parts[-2], parts[-1]))
                    continue
                where = _split_parts(rel) if m.isfile() else None
                if where is None:
                    continue
                split, cls, name = where
                dirs.add((split, cls))
                if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                    f = tf.extractfile(m)
                    files.setdefault((split, cls), []).append((f"{path}:{m.name}", f.read() if f else b""))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EdgenasError(f"{path} is not a readable tar archive ({e})",
                           "pass a .tar/.tar.gz of train/<class>/* and test/<class>/*, or a folder") from None
    for d in dirs:
        files.setdefault(d, [])
    if not any(s == "train" for s, _ in files) or not any(s == "test" for s, _ in files):
        raise EdgenasError(f"{path} does not hold train/ and test/ folders",
                           "lay it out as train/<class>/* and test/<class>/*")
    for key in files:
        files[key].sort(key=lambda item: item[0])
    return files


def _decode(name: str, source: Any) -> torch.Tensor:
    """One image as uint8 (C, H, W) with C 1 or 3; alpha dropped, palettes expanded.

    torchvision's decoder is tried first (it decodes JPEG and PNG faster than PIL); PIL reads
    whatever it cannot.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        with warnings.catch_warnings():  # torchvision 0.29 flags its decoders as moving to torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image

            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        if img.shape[0] == 2:
            img = img[:1]
        elif img.shape[0] == 4:
            img = img[:3]
        return _to_uint8(img)
    except Exception:  # formats torchvision does not decode (BMP, TIFF, PPM...): try PIL
        pass
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.mode.startswith("I;16"):
                # PIL's convert("L") clips 16-bit values at 255; scale them down instead
                arr = np.asarray(_to_uint8(torch.from_numpy(np.asarray(im).astype(np.int32))))
            else:
                im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "F") else "RGB")
                arr = np.asarray(im)
    except Exception as e:
        raise EdgenasError(f"image {name} cannot be decoded ({type(e).__name__})",
                           "remove or replace the corrupt file") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    """16-bit (or wider) samples scaled to 0..255, rounded; uint8 passes through unchanged."""
    if img.dtype == torch.uint8:
        return img
    wide = img.to(torch.int64).clamp(0, 65535)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def _decode_folder(path: Path, files: FileList, image_size: int | None) -> Raw:
    train_classes = sorted(c for s, c in files if s == "train")
    test_classes = sorted(c for s, c in files if s == "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise EdgenasError(f"{path}: train and test have different classes (only in train: "
                           f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})",
                           "give both splits the same class folders")
    if not train_classes:
        raise EdgenasError(f"{path}: train/ has no class folders", "add train/<class>/* and test/<class>/*")
    for (split, cls), items in sorted(files.items()):
        if not items:
            raise EdgenasError(f"{path}: class folder {split}/{cls} has no images",
                               f"add images ({', '.join(IMAGE_SUFFIXES[:3])}, ...) or remove the folder")
    decoded: dict[str, tuple[list[torch.Tensor], list[int]]] = {"train": ([], []), "test": ([], [])}
    first: torch.Tensor | None = None
    total = sum(len(v) for v in files.values())
    for (split, cls), items in sorted(files.items()):
        label = train_classes.index(cls)
        for name, source in items:
            img = _decode(name, source)
            if first is None:
                first = img
                side = image_size or max(img.shape[1], img.shape[2])
                if total * 3 * side * side > MAX_DECODED_BYTES:
                    raise EdgenasError(f"{path}: {total} images of {side}x{side} would need more than "
                                       f"{MAX_DECODED_BYTES / 2**30:.0f} GiB in memory",
                                       "use --image-size to store them smaller, or a smaller dataset")
            decoded[split][0].append(img)
            decoded[split][1].append(label)
    all_imgs = decoded["train"][0] + decoded["test"][0]
    channels = 3 if any(im.shape[0] == 3 for im in all_imgs) else 1  # mixed folders become RGB
    if image_size is None:
        sizes = Counter((im.shape[1], im.shape[2]) for im in all_imgs)
        (h, w), _ = sizes.most_common(1)[0]
    else:
        h = w = image_size
    out = []
    for split in ("train", "test"):
        imgs, labels = decoded[split]
        fixed = []
        for im in imgs:
            if im.shape[0] != channels:
                im = im.expand(3, -1, -1)
            if im.shape[1] != h or im.shape[2] != w:
                im = torch.nn.functional.interpolate(im[None].float(), size=(h, w), mode="bilinear",
                                                     antialias=True, align_corners=False)[0]
                im = im.round().clamp(0, 255).to(torch.uint8)
            fixed.append(im)
        out.append((torch.stack(fixed), torch.tensor(labels, dtype=torch.int64)))
    return out[0], out[1], train_classes
