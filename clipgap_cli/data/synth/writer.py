"""Writing rendered images as a Diverse Weather VOC tree: JPEGs, VOC XML and the split lists."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from clipgap_cli.data.synth.scene import CLASSES
from clipgap_cli.rundir import atomic_write

JPEG_QUALITY = 90
TRAIN_FRACTION = 0.75


def write_image(voc: Path, image_id: str, pixels: np.ndarray, boxes) -> None:
    """One image of a VOC2007 directory `voc`: JPEGImages/<id>.jpg and Annotations/<id>.xml."""
    _write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", pixels)
    _write_xml(voc / "Annotations" / f"{image_id}.xml", image_id, pixels.shape[0], boxes)


def write_splits(voc: Path, n_images: int) -> None:
    """ImageSets/Main/{train,test}.txt: the first 75% of the images train, the rest test."""
    n_train = min(n_images - 1, max(1, round(TRAIN_FRACTION * n_images)))
    ids = [f"{i:06d}\n" for i in range(n_images)]
    for split, lines in (("train", ids[:n_train]), ("test", ids[n_train:])):
        text = "".join(lines)
        atomic_write(voc / "ImageSets" / "Main" / f"{split}.txt", lambda tmp, t=text: tmp.write_text(t))


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    image = Image.fromarray(pixels)
    atomic_write(path, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0"))


def _write_xml(path: Path, image_id: str, size: int, boxes) -> None:
    """A VOC annotation: 1-based inclusive corners, so pixel box [x0, x1) is xmin=x0+1, xmax=x1."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2007"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size_el = ET.SubElement(ann, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for label, (x0, y0, x1, y1) in boxes:
        obj = ET.SubElement(ann, "object")
        for key, value in (
            ("name", CLASSES[label]),
            ("pose", "Unspecified"),
            ("truncated", 0),
            ("difficult", 0),
        ):
            ET.SubElement(obj, key).text = str(value)
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(ann)
    text = ET.tostring(ann, encoding="unicode") + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
