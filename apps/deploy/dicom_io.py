"""DICOM MR series <-> NIfTI for the MONAI Deploy app, with pydicom (>= 3).

Reading groups the files of a folder by SeriesInstanceUID, sorts the slices along the slice normal
and builds the voxel-to-world affine (DICOM's LPS converted to NIfTI's RAS), so the NIfTI a bundle
reads has the geometry the scanner wrote. Writing makes a derived MR Image Storage series on any
NIfTI grid, in the patient and study of a reference series. Also a command line, used by the
tests to make a DICOM study from phantom volumes::

    python apps/deploy/dicom_io.py to-dicom t1.nii.gz OUT_DIR --description T1 --study-uid UID
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)

__all__ = ["find_series", "read_series", "write_series", "MR_IMAGE_STORAGE"]


def find_series(folder) -> dict[str, list[Path]]:
    """``{SeriesInstanceUID: [files]}`` for every readable DICOM image file under ``folder``
    (recursively; other files are ignored)."""
    series: dict[str, list[Path]] = {}
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: NIfTI files, sidecars, anything else
            continue
        if "SeriesInstanceUID" in ds and "ImagePositionPatient" in ds:
            series.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return series


def read_series(files) -> tuple[np.ndarray, np.ndarray, Dataset]:
    """A single-frame MR series as ``(volume (columns, rows, slices) float32, RAS affine, first slice's
    dataset)``; slices sorted along the normal of ImageOrientationPatient.

    Raises:
        ValueError: naming the file, for slices of different orientation or size, or uneven spacing.
    """
    slices = [pydicom.dcmread(f) for f in files]
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row, col)
    for f, ds in zip(files, slices):
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            raise ValueError(f"{f}: slice orientation differs from the rest of its series")
        if (ds.Rows, ds.Columns) != (slices[0].Rows, slices[0].Columns):
            raise ValueError(f"{f}: slice size {ds.Rows}x{ds.Columns} differs from the rest of its series")
    order = np.argsort([float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)) for ds in slices])
    slices = [slices[i] for i in order]
    files = [files[i] for i in order]
    pos = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in slices])
    if len(slices) > 1:
        steps = np.diff(pos @ normal)
        if np.any(steps <= 0) or not np.allclose(steps, steps[0], rtol=1e-3, atol=1e-3):
            raise ValueError(f"{files[0]}: uneven or repeated slice positions in its series ({len(slices)} slices)")
        step = pos[-1] - pos[0]
        step = step / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # between rows, between columns
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * dc
    affine_lps[:3, 1] = col * dr
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = pos[0]
    volume = np.stack([
        ds.pixel_array.astype(np.float32).T * float(getattr(ds, "RescaleSlope", 1) or 1)
        + float(getattr(ds, "RescaleIntercept", 0) or 0) for ds in slices], axis=-1)
    return volume, LPS @ affine_lps, slices[0]


def write_series(volume, affine, out_dir, description: str, reference: Dataset | None = None, series_number: int = 1000,
                 derived: bool = True, study_uid: str | None = None, patient_id: str = "ANONYMOUS") -> list[Path]:
    """Write ``volume`` (columns, rows, slices) on the RAS ``affine`` as an MR Image Storage series
    of 16-bit slices with a rescale slope (values kept to 1/65535 of their range); returns the files.

    The patient and study come from ``reference`` (a slice of the input series) when given, else a
    new study (``study_uid``) of ``patient_id``. ``derived`` marks the images DERIVED\\SECONDARY with
    a derivation note (a synthesized series must never pass for an acquired one).
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"write_series needs a 3D volume, got shape {volume.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = LPS @ np.asarray(affine, dtype=float)
    dc, dr, dz = (float(np.linalg.norm(a[:3, i])) for i in range(3))
    row, col = a[:3, 0] / dc, a[:3, 1] / dr
    lo, hi = float(volume.min()), float(volume.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    written = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if reference is not None:
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                            "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "StudyDescription",
                            "ReferringPhysicianName", "FrameOfReferenceUID"):
                if keyword in reference:
                    setattr(ds, keyword, getattr(reference, keyword))
        else:
            ds.PatientName, ds.PatientID = patient_id, patient_id
            ds.StudyInstanceUID = study_uid or generate_uid()
            ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        if "FrameOfReferenceUID" not in ds:
            ds.FrameOfReferenceUID = frame_uid
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, series_number
        ds.SeriesDescription, ds.InstanceNumber = description, k + 1
        ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        if derived:
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = f"synthesized by mrsynth ({description}); not an acquired image"
        else:
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImagePositionPatient = [float(v) for v in (a @ np.array([0, 0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [dr, dc]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{lo:.10g}"
        slope_used, lo_used = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        stored = np.clip(np.round((volume[:, :, k].T - lo_used) / slope_used), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    to = sub.add_parser("to-dicom", help="a NIfTI volume as an (acquired-looking) MR series, for tests and demos")
    to.add_argument("nifti")
    to.add_argument("out_dir")
    to.add_argument("--description", required=True)
    to.add_argument("--study-uid", default=None)
    to.add_argument("--patient-id", default="PHANTOM")
    to.add_argument("--series-number", type=int, default=1)
    args = parser.parse_args(argv)
    img = nib.load(args.nifti)
    write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, args.out_dir, args.description,
                 series_number=args.series_number, derived=False, study_uid=args.study_uid, patient_id=args.patient_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
