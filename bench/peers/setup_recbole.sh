#!/usr/bin/env bash
# Creates bench/.venv-recbole: a virtualenv of its own for the RecBole peer baseline
# (bench/peers/sasrec.py). RecBole is not a dependency of the project.
#
#   bash bench/peers/setup_recbole.sh          # from anywhere; PYTHON=python3.11 by default
#
# Idempotent: when the venv already has exactly these pins and imports RecBole's SASRec,
# it does nothing. Otherwise it (re)creates the venv and installs the pins with pip.
#
# Why these pins (RecBole 1.2.1 declares only lower bounds, except ray<=2.6.3 and colorlog/colorama):
#   numpy 1.26.4   RecBole 1.2.1 aliases np.float_/np.unicode_ etc. (removed in numpy 2), and
#                  ray 2.6.3 uses np.bool8; numpy>=1.24 alone is fine because RecBole re-adds np.float.
#   torch 2.13.0   the project's torch. Since torch 2.6 torch.load defaults to weights_only=True,
#                  which cannot read RecBole's checkpoints (they pickle the Config): sasrec.py loads
#                  the best checkpoint itself with weights_only=False instead of trainer.evaluate's load.
#   pandas 2.2.3   pandas 3 (copy-on-write, pyarrow strings by default) is untested with RecBole's loader.
#   scipy 1.13.1, scikit-learn 1.5.2: last lines built against numpy 1.x that RecBole was used with.
#   ray 2.6.3      required by RecBole's metadata (<=2.6.3); only recbole.quick_start imports it,
#                  and sasrec.py does not import recbole.quick_start.
#   tensorboard, thop, colorlog, colorama: imported by recbole.utils / recbole.trainer.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/../.venv-recbole"
python="${PYTHON:-python3.11}"

pins=(
    recbole==1.2.1
    torch==2.13.0
    numpy==1.26.4
    scipy==1.13.1
    pandas==2.2.3
    scikit-learn==1.5.2
    ray==2.6.3
    tensorboard==2.18.0
    protobuf==4.25.5
    thop==0.1.1.post2209072238
    colorlog==4.7.2
    colorama==0.4.4
    pyyaml==6.0.2
    tqdm==4.67.1
    tabulate==0.9.0
    plotly==5.24.1
    texttable==1.7.0
    psutil==6.1.1
)
stamp="$venv/.pins"
wanted="$(printf '%s\n' "${pins[@]}")"

complete() {
    [[ -x "$venv/bin/python" && -f "$stamp" ]] || return 1
    [[ "$(cat "$stamp")" == "$wanted" ]] || return 1
    "$venv/bin/python" - <<'EOF' >/dev/null 2>&1
import numpy, torch, recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
assert recbole.__version__ == "1.2.1" and torch.__version__.split("+")[0] == "2.13.0"
assert numpy.__version__ == "1.26.4"
EOF
}

if complete; then
    echo "bench/.venv-recbole is complete; nothing to do" >&2
    exit 0
fi

echo "creating $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install "${pins[@]}" >&2
printf '%s\n' "$wanted" >"$stamp"
complete || { echo "bench/.venv-recbole was installed but does not import RecBole's SASRec" >&2; exit 1; }
"$venv/bin/python" -m pip freeze >"$venv/freeze.txt"
echo "bench/.venv-recbole ready (pip freeze in bench/.venv-recbole/freeze.txt)" >&2
