"""Run DataComp's own ``baselines.py`` on local assets, for the byte-for-byte comparison test.

Test harness only (never imported by the package): it puts a DataComp checkout on the path and
changes nothing in DataComp's filtering code. It only replaces what needs the internet or a GPU:
``download(name)`` returns the test's local asset for ``name``, ``nltk.download`` does nothing (the
test's WordNet is put on NLTK's path), ``torch.load`` reads pickled arrays as DataComp's torch 1.13
did, and without CUDA the tensors DataComp sends to ``cuda:N`` stay on the CPU (the same float32
einsum and argmax, on another device). Configuration comes in $DC_HARNESS_CONFIG (JSON), so
DataComp's spawned workers, which re-run this file's top level, see it too.

    DC_HARNESS_CONFIG='{...}' PYTHON run_apply_filter.py --name basic_filter --metadata_dir M --save_path S ...
"""

import json
import os
import sys

CONFIG = json.loads(os.environ["DC_HARNESS_CONFIG"])
sys.path.insert(0, CONFIG["src"])

import nltk  # noqa: E402
import torch  # noqa: E402

nltk.data.path.insert(0, CONFIG["wordnet_data"])
nltk.download = lambda *args, **kwargs: True

_load = torch.load
torch.load = lambda *args, **kwargs: _load(*args, **{"weights_only": False, **kwargs})

if not torch.cuda.is_available():
    _to = torch.Tensor.to

    def _stay_on_cpu(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return _to(self, *args, **kwargs)

    torch.Tensor.to = _stay_on_cpu
    torch.cuda.is_available = lambda: True  # DataComp's check_args insists on a GPU for image_based

import baselines.apply_filter as apply_filter  # noqa: E402
import baselines.utils as utils  # noqa: E402

ASSETS = {"fasttext": CONFIG["fasttext"], "imagenet21k_wordnet_ids": CONFIG["imagenet21k_wordnet_ids"],
          "small_centroids": CONFIG["small_centroids"],
          **{f"in1k_clip_vit_l14_{i}": p for i, p in enumerate(CONFIG["in1k"])}}


def download(name, root=None):
    return ASSETS[name]


utils.download = download
apply_filter.download = download

if __name__ == "__main__":
    # DataComp's command line, run in this module (not runpy's fresh one): its spawned workers then
    # re-run this file's top level, with the replacements above
    script = os.path.join(CONFIG["src"], "baselines.py")
    sys.argv = [script, *sys.argv[1:]]
    with open(script) as fh:
        exec(compile(fh.read(), script, "exec"), globals())
