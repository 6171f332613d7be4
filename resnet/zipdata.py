"""A learner's own data: a zip of class folders (cat/1.png, dog/2.jpg, ...) becomes a Dataset of theirs alone.

The zip is read in memory (never extracted), so a hostile archive name cannot write anywhere, and every limit is
checked before the work it bounds: its size, its entry count, what it unpacks to, then each image's pixels, read
from its header before it is decoded. Each picture becomes 32x32 RGB through inference.to_square, exactly as a
prediction sees it. A damaged or password-protected member is refused by name, like any other bad entry.
"""

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from .data import DataError, Dataset
from .inference import ImageError, header, to_square

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
MAX_UPLOAD_MB = 10  # the largest file a learner may upload (the app's max_file_size): zips, checkpoints, images
MB = 2**20  # bytes in the app's "mb": gradio counts max_file_size="10mb" as 10 * 2**20 bytes
MPX = 1_000_000  # pixels in a megapixel
DRAFT = 4 * 32  # px a side a JPEG is decoded down to (1/2..1/8 scale), as to_square decodes an uploaded one
# what unpacking a member can raise: a bad CRC or header (BadZipFile), corrupt deflate, lzma or bzip2 data,
# an unknown compression method, a truncated stream
UNPACKING = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError)


@dataclass(frozen=True)
class ZipLimits:
    max_bytes: int = MAX_UPLOAD_MB * MB  # size of the uploaded archive: any zip the app lets through
    max_files: int = 5_000  # entries in it
    max_unpacked: int = 200 * MB  # bytes once decompressed (a zip bomb is small packed)
    min_per_class: int = 2  # images per class: one to learn from and one held out
    # Decoding costs per pixel (about 10 ms of CPU and 8 bytes of memory a megapixel; a 16-bit PNG 6x and 3x that),
    # and the net sees 32x32 of each picture. A JPEG counts at the reduced scale it decodes at: a 12-Mpx phone photo
    # counts 0.19 Mpx. One image may be a 4K screenshot; a whole zip costs seconds of CPU, not minutes.
    max_pixels: int = 3840 * 2160  # per image, as decoded
    max_total_pixels: int = 150 * MPX  # all images together, as decoded


def load_zip(path: str | Path, limits: ZipLimits = ZipLimits(), held_out: float = 0.2) -> Dataset:
    """A zip of class folders (cat/1.png, dog/x.jpg, ...) -> a Dataset; anything odd is refused with the reason."""
    path = Path(path)
    if path.stat().st_size > limits.max_bytes:
        raise DataError(
            f"The zip is {path.stat().st_size / MB:.1f} MB; the limit is {limits.max_bytes / MB:g} MB.",
            zh=f"这个 zip 有 {path.stat().st_size / MB:.1f} MB；上限是 {limits.max_bytes / MB:g} MB。",
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(
            f"That file is not a zip archive we can read ({e}).", zh=f"这个文件不是能读取的 zip 压缩包（{e}）。"
        ) from e
    with archive:
        entries = [e for e in archive.infolist() if not e.is_dir()]
        if len(entries) > limits.max_files:
            raise DataError(
                f"The zip holds {len(entries)} files; the limit is {limits.max_files}.",
                zh=f"这个 zip 里有 {len(entries)} 个文件；上限是 {limits.max_files}。",
            )
        if sum(e.file_size for e in entries) > limits.max_unpacked:
            raise DataError(
                f"The zip unpacks to more than {limits.max_unpacked / MB:.0f} MB.",
                zh=f"这个 zip 解压后超过 {limits.max_unpacked / MB:.0f} MB。",
            )
        by_class: dict[str, list[np.ndarray]] = {}
        decoded = 0  # pixels of the images so far, as decoded
        for e in entries:
            parts = e.filename.replace("\\", "/").split("/")
            if e.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise DataError(
                    f"Refused: the entry {e.filename!r} points outside the archive.",
                    zh=f"已拒绝：条目 {e.filename!r} 指向压缩包之外。",
                )
            if parts[-1].startswith(".") or parts[0] == "__MACOSX":
                continue  # macOS and editor litter
            if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{e.filename!r} is not an image file; the zip must hold only class folders of images.",
                    zh=f"{e.filename!r} 不是图片文件；zip 里只能有按类别分的图片文件夹。",
                )
            if len(parts) < 2:
                raise DataError(
                    f"{e.filename!r} is not inside a class folder (expected e.g. cat/{parts[-1]}).",
                    zh=f"{e.filename!r} 不在类别文件夹里（应为例如 cat/{parts[-1]}）。",
                )
            img = _open(archive, e)  # header read, nothing decoded yet
            size = img.width * img.height
            if size > limits.max_pixels:
                raise DataError(
                    f"{e.filename!r} is {img.width}x{img.height} pixels ({size / MPX:.1f} Mpx); the limit is "
                    f"{limits.max_pixels / MPX:.1f} Mpx per image (the net sees 32x32): save it smaller, or as a JPEG.",
                    zh=f"{e.filename!r} 有 {img.width}x{img.height} 像素（{size / MPX:.1f} 百万）；每张图片上限是 "
                    f"{limits.max_pixels / MPX:.1f} 百万像素（网络只看 32x32）：请缩小保存，或存为 JPEG。",
                )
            decoded += size
            if decoded > limits.max_total_pixels:
                raise DataError(
                    f"The images add up to more than {limits.max_total_pixels / MPX:.0f} Mpx (at {e.filename!r}); "
                    "the net sees each at 32x32: make the pictures smaller (e.g. 512 px wide) or send fewer.",
                    zh=f"图片加起来超过 {limits.max_total_pixels / MPX:.0f} 百万像素（到 {e.filename!r} 为止）；"
                    "网络只看每张的 32x32：请把图片缩小（例如 512 像素宽）或少放一些。",
                )
            try:
                pixels = np.asarray(to_square(img))  # (32, 32, 3) uint8, exactly as predict sees it
            except ImageError as err:
                raise _unreadable(e.filename, err) from err
            by_class.setdefault(parts[-2], []).append(pixels)
    if len(by_class) < 2:
        raise DataError(
            f"Found {len(by_class)} class folder(s); at least 2 are needed to learn anything.",
            zh=f"只找到 {len(by_class)} 个类别文件夹；至少需要 2 个才能学到东西。",
        )
    small = [c for c, imgs in by_class.items() if len(imgs) < limits.min_per_class]
    if small:
        raise DataError(
            f"Each class needs at least {limits.min_per_class} images; too few in: {', '.join(small)}.",
            zh=f"每个类别至少需要 {limits.min_per_class} 张图片；图片太少的类别：{'、'.join(small)}。",
        )
    classes = tuple(sorted(by_class))
    split = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for label, name in enumerate(classes):
        imgs = by_class[name]
        n_test = max(1, round(len(imgs) * held_out))
        for part, chunk in (("test", imgs[:n_test]), ("train", imgs[n_test:])):
            split[f"{part}_x"] += chunk
            split[f"{part}_y"] += [label] * len(chunk)
    tensors = {
        k: torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous()
        if k.endswith("_x")
        else torch.tensor(v, dtype=torch.int64)
        for k, v in split.items()
    }
    return Dataset(name=f"zip:{path.stem}", classes=classes, **tensors)


def _open(archive: zipfile.ZipFile, e: zipfile.ZipInfo) -> Image.Image:
    """The member e as an image opened lazily (its header read, nothing decoded), a JPEG set to decode at a
    reduced scale, so that its size is what decoding will cost; anything unreadable is refused."""
    if e.flag_bits & 0x1:  # zipfile would raise a RuntimeError asking for the password
        raise DataError(
            f"{e.filename!r} is password-protected; make the zip again without a password.",
            zh=f"{e.filename!r} 设置了密码；请不加密码重新制作 zip。",
        )
    try:
        raw = archive.read(e)  # checks its CRC too
    except UNPACKING as err:
        raise DataError(
            f"{e.filename!r} is damaged and cannot be unpacked ({err}); make the zip again.",
            zh=f"{e.filename!r} 已损坏，无法解压；请重新制作 zip。",
        ) from err
    try:
        img = header(raw)  # an image, and not a decompression bomb (inference.MAX_PIXELS)
    except ImageError as err:
        raise _unreadable(e.filename, err) from err
    if isinstance(img, JpegImageFile):  # MPO too, a phone's JPEG with a second picture in it
        img.draft(None, (DRAFT, DRAFT))  # sets img.size to the scale it will decode at
    return img


def _unreadable(name: str, err: ImageError) -> DataError:
    return DataError(
        f"{name!r} could not be read as an image. {err}", zh=f"{name!r} 无法作为图片读取。{err.text('zh')}"
    )
