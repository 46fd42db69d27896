"""MONAI Deploy application (monai-deploy-app-sdk 4): synthesize a sequence for one study with any
of this repository's bundles.

    python apps/deploy/app.py -i STUDY -o OUT -m BUNDLE [--target flair] [--override '{"source": "t1"}']
        [--config configs/inference.json --config configs/quick.json]

* ``STUDY``: a folder with the study's available sequences, as NIfTI files named by sequence
  (``t1.nii.gz``, ``BraTS_001_t2.nii.gz``: the last ``_``-separated word), or as DICOM MR series
  (any folder structure; a series is matched to a sequence by its SeriesDescription, e.g. ``T1``,
  ``FLAIR``). Images of sequences the bundle does not know are named in the log and left out.
* ``BUNDLE``: a bundle folder with trained weights (``models/model.pt``), or a zip made by
  ``tools/package_bundles.py`` (the model zoo's format; it is unpacked into the work folder).
  ``MRSYNTH_BUNDLE`` or the SDK's ``HOLOSCAN_MODEL_PATH`` may name it instead of ``-m``.
* ``OUT`` receives ``<target>_syn.nii.gz`` (on the grid of the study's first source) with the
  bundle's JSON sidecar, and, for a DICOM study, ``dicom/``: a derived MR series in the same
  patient and study (ImageType DERIVED\\SECONDARY, SeriesDescription ``SYNTHETIC <TARGET>``).

Three operators, each replaceable: :class:`StudyLoaderOperator` (study -> one-case folder),
:class:`BundleSynthesisOperator` (runs the bundle's own ``configs/inference.json``, see
:func:`mrsynth.workflows.serving.run_bundle_inference`) and :class:`SynthesisWriterOperator`.
Runs on a CPU (the SDK's Holoscan runtime needs no GPU for Python operators) and on a GPU.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from holoscan.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dicom_io import find_series, read_series, write_series  # noqa: E402

logger = logging.getLogger("mrsynth.deploy")


def _bundle_folder(path: Path, work: Path) -> Path:
    """A bundle folder from a folder or a model-zoo zip (``<name>/configs/...`` inside)."""
    if path.is_dir():
        return path
    if zipfile.is_zipfile(path):
        dest = work / "bundle"
        with zipfile.ZipFile(path) as z:
            z.extractall(dest)
        roots = [p.parent.parent for p in dest.glob("*/configs/inference.json")]
        if len(roots) != 1:
            raise ValueError(f"{path}: a bundle zip holds one <name>/configs/inference.json, found {len(roots)}")
        return roots[0]
    raise ValueError(f"{path}: neither a bundle folder nor a bundle zip")


class StudyLoaderOperator(Operator):
    """Reads the input folder and emits ``{"dataset_dir", "sources", "dicom_reference"}``: a one-case
    BraTS-layout folder in the work folder (links to NIfTI inputs; DICOM series converted)."""

    def __init__(self, fragment, *args, input_path: Path, work_dir: Path, sequences: list[str] | None, **kwargs):
        self.input_path, self.work_dir, self.sequences = Path(input_path), Path(work_dir), sequences
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("study")

    def _known(self, name: str | None) -> bool:
        return bool(name) and (self.sequences is None or name in self.sequences)

    def compute(self, op_input, op_output, context):
        from mrsynth.workflows.serving import sequence_from_filename, stage_study

        files, ignored, reference = {}, [], None
        candidates = [self.input_path] if self.input_path.is_file() else sorted(self.input_path.rglob("*.nii*"))
        for f in candidates:
            seq = sequence_from_filename(f)
            (files.__setitem__(seq, f) if self._known(seq) and seq not in files else ignored.append(f.name))
        if not files and self.input_path.is_dir():
            converted = self.work_dir / "from_dicom"
            for uid, series in find_series(self.input_path).items():
                volume, affine, first = read_series(series)
                seq = str(getattr(first, "SeriesDescription", "")).strip().lower().replace(" ", "_")
                if not self._known(seq) or seq in files:
                    ignored.append(f"series {seq or uid}")
                    continue
                if volume.ndim != 3 or min(volume.shape) < 1:
                    raise ValueError(f"{series[0]}: series {seq} is not a 3D volume (shape {volume.shape})")
                files[seq] = converted / f"{seq}.nii.gz"
                files[seq].parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(volume, affine), str(files[seq]))
                reference = reference or first
        if ignored:
            logger.warning("%s: left out (not a sequence this bundle knows: %s): %s", self.input_path,
                           self.sequences or "any", ", ".join(ignored))
        if not files:
            raise ValueError(f"{self.input_path}: no NIfTI file or DICOM series of a known sequence "
                             f"({self.sequences or 'any'}) was found")
        logger.info("%s: study with %s%s", self.input_path, ", ".join(sorted(files)), " (DICOM)" if reference else "")
        dataset_dir = stage_study(files, self.work_dir / "study")
        op_output.emit({"dataset_dir": dataset_dir, "sources": sorted(files), "dicom_reference": reference}, "study")


class BundleSynthesisOperator(Operator):
    """Runs the bundle's ``configs/inference.json`` (with ``overrides``) on the staged study and emits
    ``{"synthesis": path, "sidecar": path, "dicom_reference"}``."""

    def __init__(self, fragment, *args, bundle_root: Path, work_dir: Path, overrides: dict,
                 config_files=("configs/inference.json",), **kwargs):
        self.bundle_root, self.work_dir, self.overrides = Path(bundle_root), Path(work_dir), dict(overrides)
        self.config_files = tuple(config_files)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study")
        spec.output("synthesis")

    def compute(self, op_input, op_output, context):
        from mrsynth.workflows.serving import run_bundle_inference

        study = op_input.receive("study")
        out = self.work_dir / "synthesis"
        written = run_bundle_inference(self.bundle_root, study["dataset_dir"], out, config_files=self.config_files,
                                       **self.overrides)
        if len(written) != 1:
            raise RuntimeError(f"{self.bundle_root}: expected one synthesis for the study, got {written}")
        syn = Path(written[0])
        op_output.emit({"synthesis": syn, "sidecar": syn.with_name(syn.name.replace(".nii.gz", ".json")),
                        "dicom_reference": study["dicom_reference"]}, "synthesis")


class SynthesisWriterOperator(Operator):
    """Writes ``<target>_syn.nii.gz`` and its sidecar to the output folder, and a derived DICOM series
    under ``dicom/`` when the study came as DICOM. Files are written under a temporary name and
    renamed, so an interrupted run leaves no half-written output."""

    def __init__(self, fragment, *args, output_path: Path, **kwargs):
        self.output_path = Path(output_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("synthesis")

    def compute(self, op_input, op_output, context):
        result = op_input.receive("synthesis")
        syn, sidecar = Path(result["synthesis"]), Path(result["sidecar"])
        self.output_path.mkdir(parents=True, exist_ok=True)
        target = json.loads(sidecar.read_text())["target"] if sidecar.is_file() else syn.name.split("_")[-2]
        for src, name in ((syn, f"{target}_syn.nii.gz"), (sidecar, f"{target}_syn.json")):
            if src.is_file():
                tmp = self.output_path / f".{name}.part"
                shutil.copyfile(src, tmp)
                os.replace(tmp, self.output_path / name)
        reference = result["dicom_reference"]
        if reference is not None:
            img = nib.load(str(syn))
            tmp_dir = self.output_path / ".dicom.part"
            shutil.rmtree(tmp_dir, ignore_errors=True)
            write_series(np.asarray(img.dataobj, dtype=np.float32), img.affine, tmp_dir, f"SYNTHETIC {target.upper()}",
                         reference=reference, series_number=int(getattr(reference, "SeriesNumber", 0) or 0) + 1000)
            shutil.rmtree(self.output_path / "dicom", ignore_errors=True)
            os.replace(tmp_dir, self.output_path / "dicom")
        logger.info("%s: %s written%s", self.output_path, f"{target}_syn.nii.gz", " and dicom/" if reference else "")


class SynthesisApp(Application):
    """Study -> bundle synthesis -> NIfTI (and DICOM) output. ``target`` and ``overrides`` are the
    bundle's config ids (``--target``, ``--override JSON``)."""

    def __init__(self, *args, target: str | None = None, overrides: dict | None = None,
                 config_files=("configs/inference.json",), **kwargs):
        self.target, self.overrides, self.config_files = target, dict(overrides or {}), tuple(config_files)
        super().__init__(*args, **kwargs)

    def compose(self):
        from mrsynth.workflows.serving import bundle_sequences

        context = Application.init_app_context([sys.argv[0], *self.argv])  # Holoscan drops the program name
        model = os.environ.get("MRSYNTH_BUNDLE") or context.model_path
        if not model:
            raise ValueError("no bundle: pass -m BUNDLE (a bundle folder or zip) or set MRSYNTH_BUNDLE")
        if context.workdir:
            work = Path(context.workdir).resolve()
        else:  # a scratch folder of our own, removed at exit
            work = Path(tempfile.mkdtemp(prefix="mrsynth_deploy_"))
            atexit.register(shutil.rmtree, work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        bundle = _bundle_folder(Path(model).resolve(), work)
        if str(bundle) not in sys.path and (bundle / "mrsynth").is_dir():
            sys.path.insert(0, str(bundle))  # a packaged bundle's own copy of the package
        overrides = dict(self.overrides)
        if self.target:
            overrides["target"] = self.target
        loader = StudyLoaderOperator(self, CountCondition(self, 1), name="study_loader", input_path=context.input_path,
                                     work_dir=work, sequences=bundle_sequences(bundle, self.config_files))
        synth = BundleSynthesisOperator(self, name="bundle_synthesis", bundle_root=bundle, work_dir=work,
                                        overrides=overrides, config_files=self.config_files)
        writer = SynthesisWriterOperator(self, name="writer", output_path=context.output_path)
        self.add_flow(loader, synth, {("study", "study")})
        self.add_flow(synth, writer, {("synthesis", "synthesis")})


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--target", default=None, help="the sequence to synthesize (the bundle's `target` id)")
    parser.add_argument("--override", default="{}", help="more config ids as JSON, e.g. '{\"source\": \"t1\"}'")
    parser.add_argument("--config", action="append", default=None,
                        help="bundle config(s) to stack, relative to the bundle (default configs/inference.json; "
                             "repeat for more, e.g. --config configs/inference.json --config configs/quick.json)")
    ours, rest = parser.parse_known_args(argv[1:])
    app = SynthesisApp([argv[0], *rest], target=ours.target, overrides=json.loads(ours.override),
                       config_files=ours.config or ["configs/inference.json"])
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
