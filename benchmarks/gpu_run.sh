#!/usr/bin/env bash
# The real stages on a Flickr30k-sized synthetic dataset, each timed; made for one GPU machine
# (e.g. an H200 with 16 cores) without internet, in well under ten minutes.
#
#   bash benchmarks/gpu_run.sh                         # from the repository root
#   IMAGES=50 EPOCHS=1 DEVICE=cpu bash benchmarks/gpu_run.sh /tmp/tiny   # a smoke run anywhere
#
# 1. Packages: when a ./.whl folder exists, installs the lock (requirements.txt) less torch,
#    torchvision and their CUDA packages (which the machine has) from it, offline: pip install
#    --no-index --find-links .whl. Make that folder on a machine with PyPI and the same Python and
#    platform:
#        python -m benchmarks.offline_requirements > /tmp/req.txt
#        pip download --no-deps -r /tmp/req.txt -d .whl --only-binary=:all:
# 2. Data: benchmarks/flickr30k_like.py writes 31,783 JPEGs (~500x375) and 158,915 captions, on all cores.
# 3. Stages, each timed: prepare, features (nvJPEG decoding and bf16 on CUDA), vocab, embeddings,
#    train (EPOCHS epochs, default 2), then evaluate with beam 5 on the 1,000 test images; without
#    Java (which evaluate's COCO scorer needs) benchmarks/caption_split.py times the same beam
#    search and scores BLEU-4 only.
# Everything is written under WORK (the first argument, default /tmp/flickr30k_like); the times are
# printed at the end and kept in WORK/times.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mkdir -p "${1:-/tmp/flickr30k_like}" && cd "${1:-/tmp/flickr30k_like}" && pwd)
IMAGES=${IMAGES:-31783}
EPOCHS=${EPOCHS:-2}
DEVICE=${DEVICE:-auto}
CORES=$(nproc)
PYTHON=${PYTHON:-python}
cd "$ROOT"

if [ -d .whl ]; then
    "$PYTHON" -m benchmarks.offline_requirements > "$WORK/requirements-offline.txt"
    "$PYTHON" -m pip install --quiet --no-index --find-links .whl --no-deps -r "$WORK/requirements-offline.txt"
fi
missing=$("$PYTHON" - <<'EOF'
import importlib.util
names = ["pydantic", "yaml", "gensim", "pycocoevalcap", "dvclive", "tqdm", "matplotlib", "scipy", "PIL"]
print(" ".join(name for name in names if importlib.util.find_spec(name) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "gpu_run: missing Python packages: $missing. Put their wheels in $ROOT/.whl (see the top of this script)" >&2
    exit 1
fi

: > "$WORK/times.txt"
timed() {  # timed NAME COMMAND...: run, print and record the wall seconds
    local name=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    printf '%-12s %8.1f s\n' "$name" "$(echo "$end - $start" | bc)" | tee -a "$WORK/times.txt"
}

echo "gpu_run: $IMAGES images, $EPOCHS epochs, device $DEVICE, $CORES cores, in $WORK"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ ! -f "$WORK/data/results_20130124.token" ]; then
    timed generate "$PYTHON" -m benchmarks.flickr30k_like "$WORK/data" --images "$IMAGES" --workers "$CORES"
fi

# params: the repository's, pointed at WORK, with Flickr30k's split sizes (29,000 / 1,014 / 1,000 images)
"$PYTHON" - "$WORK" "$IMAGES" "$EPOCHS" "$DEVICE" "$CORES" <<'EOF'
import sys
from pathlib import Path
import yaml
work, images, epochs, device, cores = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
params = yaml.safe_load(Path("params.yaml").read_text())
val, test = max(1014 / 31783, 2 / images), max(1000 / 31783, 2 / images)
params["shapes"]["out_dir"] = str(work / "shapes")
(work / "no_lists").mkdir(parents=True, exist_ok=True)  # dataset.split_dir without lists: the random split below
params["dataset"].update(captions=str(work / "data/results_20130124.token"), images=str(work / "data/images"),
                         format="flickr_token", split_dir=str(work / "no_lists"), check_images=True,
                         split_ratios={"train": 1 - val - test, "val": val, "test": test},
                         table=str(work / "prepared/captions.csv"), report=str(work / "prepared/report.json"))
hub = Path.home() / ".cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2, when it was copied here
params["encoder"].update(weights="IMAGENET1K_V2" if hub.is_file() else "none", precision="auto", batch_size=256,
                         num_workers=min(cores, 16), device=device, cache=str(work / "features/features.h5"))
params["vocab"].update(min_count=5, path=str(work / "vocab/vocab.json"))
params["embeddings"].update(matrix=str(work / "embeddings/embeddings.npy"), metrics=str(work / "embeddings/metrics.json"))
params["train"].update(epochs=epochs, device=device, resume=False, checkpoint=str(work / "train/best.pt"),
                       last_checkpoint=str(work / "train/last.pt"), log_dir=str(work / "train/tensorboard"),
                       metrics_dir=str(work / "train/metrics"), num_samples=2)
params["evaluate"].update(split="test", beam_size=5, batch_size=250, objects=None, num_figures=4, device=device,
                          out_dir=str(work / "evaluate"), metrics=str(work / "evaluate/metrics.json"))
(work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
EOF
export PIPELINE_PARAMS="$WORK/params.yaml"
rm -f "$WORK/features/features.h5"  # features always run: they are what is timed

timed prepare "$PYTHON" -m pipeline.stages.prepare
timed features "$PYTHON" -m pipeline.stages.features
timed vocab "$PYTHON" -m pipeline.stages.vocab
timed embeddings "$PYTHON" -m pipeline.stages.embeddings
timed train "$PYTHON" -m pipeline.stages.train
if command -v java > /dev/null; then
    timed evaluate "$PYTHON" -m pipeline.stages.evaluate
else
    echo "gpu_run: no java on the PATH (evaluate's COCO scorer needs it): beam search timed without it"
    timed beam-search "$PYTHON" -m benchmarks.caption_split
fi

echo
echo "gpu_run: seconds per stage ($IMAGES images, $EPOCHS epochs, device $DEVICE)"
cat "$WORK/times.txt"
