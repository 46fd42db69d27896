"""A bundle through MONAI Deploy's own generic operator (``MonaiBundleInferenceOperator``,
monai-deploy-app-sdk 4), unchanged: one source image in, the synthesis out.

    python apps/deploy/generic.py -i t1.nii.gz -o OUT -m BUNDLE [-m BUNDLE2 ...] [--config inference --config quick]

The operator reads the bundle's MONAI standard ids (``preprocessing``, ``inferer``,
``postprocessing``, ``device``; ``network`` or ``network_def`` with ``models/model.pt``) and the
metadata's ``network_data_format``: the source goes through ``preprocessing`` (the SDK leaves
``LoadImage*`` and ``SaveImage*`` out), ``inferer(image, network)`` synthesizes the bundle's target
(the conditioning is bound in the inferer) and ``postprocessing`` maps it back to the source's
intensity scale. ``OUT/pred.nii.gz`` is written on the source's grid.

**The SDK stores every ``image`` output as 8-bit** (it casts to ``uint8``, written for label maps),
so intensities above 255 wrap. Use this to check that a bundle plugs into the SDK's operator, or as
a starting point; for a float synthesis (and DICOM in and out, sources fused) use ``app.py``, which
runs the bundle's own path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from holoscan.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (BundleConfigNames, IOMapping,
                                                                    MonaiBundleInferenceOperator)


class NiftiImageSource(Operator):
    """Emits a NIfTI file as an SDK ``Image`` (array in the file's axis order, metadata with the
    affine, spacing and no channel, as MONAI's loaders describe it)."""

    def __init__(self, fragment, *args, path: Path, **kwargs):
        self.path = Path(path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("image")

    def compute(self, op_input, op_output, context):
        img = nib.load(str(self.path))
        array = np.asarray(img.dataobj, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"{self.path}: expected a 3D image, got shape {array.shape}")
        affine = np.asarray(img.affine, dtype=np.float64)
        meta = {"affine": affine, "original_affine": affine, "spacing": np.asarray(img.header.get_zooms()[:3]),
                "spatial_shape": np.asarray(array.shape), "original_channel_dim": "no_channel",
                "filename_or_obj": str(self.path)}
        op_output.emit(Image(array, meta), "image")


class NiftiImageSink(Operator):
    """Writes the operator's ``pred`` (an SDK Image in ``(D, H, W)`` order, or an array) as
    ``<output>/pred.nii.gz`` on the source's grid, with ``pred.json`` (dtype and shape)."""

    def __init__(self, fragment, *args, output: Path, affine: np.ndarray, **kwargs):
        self.output, self.affine = Path(output), affine
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("pred")

    def compute(self, op_input, op_output, context):
        pred = op_input.receive("pred")
        if hasattr(pred, "asnumpy"):  # an SDK Image: (D, H, W), 8-bit
            array = np.swapaxes(pred.asnumpy(), 0, 2)  # -> the source's axis order
        else:  # an output the bundle's metadata does not call "image": the array as the bundle returns it
            array = np.asarray(pred).reshape(np.asarray(pred).shape[-3:])
        self.output.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, self.affine), str(self.output / "pred.nii.gz"))
        (self.output / "pred.json").write_text(json.dumps({"dtype": str(array.dtype), "shape": list(array.shape)}))


class GenericBundleApp(Application):
    """Source -> the SDK's bundle operator -> sink, one chain per bundle (``outputs[i]`` for ``bundles[i]``)."""

    def __init__(self, *args, source: Path, outputs, bundles, config_names=("inference",), **kwargs):
        self.source, self.outputs, self.bundles = Path(source), [Path(o) for o in outputs], [Path(b) for b in bundles]
        self.config_names = list(config_names)
        super().__init__(*args, **kwargs)

    def compose(self):
        affine = nib.load(str(self.source)).affine
        for i, (bundle, output) in enumerate(zip(self.bundles, self.outputs)):
            src = NiftiImageSource(self, CountCondition(self, 1), name=f"source_{i}", path=self.source)
            infer = MonaiBundleInferenceOperator(
                self, name=f"bundle_{i}", app_context=AppContext({}), bundle_path=bundle,
                bundle_config_names=BundleConfigNames(config_names=self.config_names),
                input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
                output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)])
            sink = NiftiImageSink(self, name=f"sink_{i}", output=output, affine=affine)
            self.add_flow(src, infer, {("image", "image")})
            self.add_flow(infer, sink, {("pred", "pred")})


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True, help="the source image (NIfTI)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("-m", "--model", required=True, action="append",
                        help="the bundle folder (with models/model.pt); repeat for several bundles, each then "
                             "written to OUT/<bundle folder name>/")
    parser.add_argument("--config", action="append", default=None,
                        help="config names under configs/, stacked in order (default: inference)")
    args = parser.parse_args(argv[1:])
    bundles = [Path(m).resolve() for m in args.model]
    out = Path(args.output).resolve()
    outputs = [out] if len(bundles) == 1 else [out / b.name for b in bundles]
    sys.path.insert(0, str(bundles[0]))  # a packaged bundle's own copy of mrsynth
    app = GenericBundleApp([argv[0]], source=Path(args.input).resolve(), outputs=outputs, bundles=bundles,
                           config_names=args.config or ["inference"])
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
