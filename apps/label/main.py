"""MONAI Label app (monailabel 0.8.5): each bundle's synthesis served as an infer task.

    monailabel start_server --app apps/label --studies STUDIES \\
        --conf bundles bundles/seq2seq,bundles/tumsyn [--conf configs configs/inference.json,configs/quick.json]

* ``--conf bundles``: comma-separated bundle folders with trained weights (``models/model.pt``).
  Each becomes an infer model named after its folder (``seq2seq``, ``tsf_seq2seq``, ...).
* ``--conf configs``: the configs stacked for every bundle, relative to it (default
  ``configs/inference.json``).
* ``STUDIES``: MONAI Label's local datastore, a folder of NIfTI images named
  ``<case>_<sequence>.nii.gz`` (a BraTS case folder's files can be put there as they are).

An infer request (``POST /infer/<bundle>?image=<id>&output=image``, params as JSON) synthesizes
``target`` (param, default the bundle's) from the requested image; with ``"siblings": true``
(default) the case's other images in the datastore (same ``<case>_`` prefix) are sources too,
as the bundle would use them. The response is the synthesized NIfTI on the requested image's grid
(or the grid the bundle is asked for, e.g. TUMSyn's ``spacing``), in that image's intensity scale.
More params are the bundle's config ids (``source``, ``target_prompt``, ``spacing``, ...).
The work is the bundle's own ``configs/inference.json``, run by
:func:`mrsynth.workflows.serving.run_bundle_inference`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

logger = logging.getLogger(__name__)

#: request keys that belong to MONAI Label, not to the bundle
_LABEL_KEYS = {"model", "image", "device", "description", "save_label", "label_tag", "result_extension",
               "result_dtype", "result_compress", "timeout", "session", "label", "client_id", "siblings", "output",
               "cache_transforms", "cache_transforms_in_memory", "cache_transforms_ttl", "largest_cc", "pipeline"}


class BundleSynthesisTask(InferTask):
    """One bundle's synthesis as a MONAI Label infer task (type ``others``: it returns an image)."""

    def __init__(self, bundle_root, config_files=("configs/inference.json",)):
        from mrsynth.workflows.serving import bundle_sequences

        self.bundle_root, self.config_files = Path(bundle_root).resolve(), tuple(config_files)
        self.sequences = bundle_sequences(self.bundle_root, self.config_files)
        self._lock = threading.Lock()  # one synthesis at a time per bundle (ConfigWorkflow state, memory)
        super().__init__(type=InferType.OTHERS, labels=None, dimension=3,
                         description=f"synthesize a sequence with the {self.bundle_root.name} bundle",
                         config={"target": "", "siblings": True})

    def is_valid(self) -> bool:
        return (self.bundle_root / "models" / "model.pt").is_file()

    def _sources(self, image: Path, siblings: bool) -> dict[str, Path]:
        from mrsynth.workflows.serving import sequence_from_filename

        seq = sequence_from_filename(image)
        if not seq or (self.sequences is not None and seq not in self.sequences):
            raise ValueError(f"{image}: the file name does not end in a sequence this bundle knows "
                             f"({self.sequences or 'any'}), e.g. <case>_t1.nii.gz")
        files = {seq: image}
        prefix = image.name[: image.name.lower().rfind(f"_{seq}")]
        if siblings and prefix:
            for f in sorted(image.parent.glob(f"{prefix}_*.nii*")):
                s = sequence_from_filename(f)
                if s and s not in files and (self.sequences is None or s in self.sequences) and \
                        f.name[: f.name.lower().rfind(f"_{s}")] == prefix:
                    files[s] = f
        return files

    def __call__(self, request) -> tuple[str | None, dict[str, Any]]:
        """The synthesis for ``request``; bad input (an unknown sequence or target, an unreadable,
        4D or constant image, a config id with a bad value) answers HTTP 422 with the file and the
        problem, not a bare 500."""
        from fastapi import HTTPException

        from mrsynth.errors import input_error_line

        try:
            return self._synthesize(request)
        except Exception as e:
            line = input_error_line(e)
            if line is None and isinstance(e, ValueError):
                line = f"error: {' '.join(str(e).split())}"
            if line is None:
                raise
            logger.warning("%s: %s", self.bundle_root.name, line)
            raise HTTPException(status_code=422, detail=line) from e

    def _synthesize(self, request) -> tuple[str | None, dict[str, Any]]:
        from mrsynth.workflows.serving import run_bundle_inference, stage_study

        image = Path(request["image"])
        siblings = str(request.get("siblings", True)).lower() not in ("false", "0", "no")
        overrides = {k: v for k, v in request.items() if k not in _LABEL_KEYS and v not in ("", None)}
        files = self._sources(image, siblings)
        work = Path(tempfile.mkdtemp(prefix="mrsynth_label_"))
        try:
            with self._lock:
                written = run_bundle_inference(self.bundle_root, stage_study(files, work / "study"), work / "out",
                                               config_files=self.config_files, **overrides)
            if len(written) != 1:
                raise RuntimeError(f"{self.bundle_root}: expected one synthesis for {image}, got {written}")
            fd, result = tempfile.mkstemp(suffix=".nii.gz", prefix=f"{image.name.split('.')[0]}_syn_")
            os.close(fd)
            shutil.copyfile(written[0], result)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("%s: %s from %s", self.bundle_root.name, result, ", ".join(sorted(files)))
        return result, {"bundle": self.bundle_root.name, "sources": sorted(files), **{k: str(v) for k, v in overrides.items()}}


class MRSynthApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        bundles = [b for b in conf.get("bundles", "").split(",") if b.strip()]
        if not bundles:
            raise ValueError("no bundle: start the server with --conf bundles PATH[,PATH...] (bundle folders with "
                             "models/model.pt)")
        configs = [c for c in conf.get("configs", "configs/inference.json").split(",") if c.strip()]
        self.tasks = {}
        for b in bundles:
            task = BundleSynthesisTask(b.strip(), configs)
            if not task.is_valid():
                raise FileNotFoundError(f"{task.bundle_root / 'models' / 'model.pt'}: no trained weights for this bundle")
            self.tasks[task.bundle_root.name] = task
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="mrsynth",
                         description="multi-sequence MRI synthesis (Seq2Seq family, TUMSyn)", version="1.0")

    def init_infers(self) -> dict[str, InferTask]:
        return dict(self.tasks)
