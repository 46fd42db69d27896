"""Dataset readers (BraTS and nnSeq2Seq layouts) and the phantom simulator (:mod:`.phantom`)."""

from .cache import file_aware_hashing, training_dataset
from .convert import convert_dataset, dataset_from_csv
from .datasets import (
    check_case_geometry,
    detect_layout,
    image_names,
    list_brats_cases,
    list_cases,
    list_nnseq2seq_cases,
    split_cases,
)

__all__ = ["list_brats_cases", "list_nnseq2seq_cases", "list_cases", "detect_layout", "check_case_geometry", "split_cases", "image_names",
           "convert_dataset", "dataset_from_csv",
           "training_dataset", "file_aware_hashing"]
