#!/bin/sh
# Installs swarmgate from a source tree into a new virtual environment, and checks that it
# runs. It is the Dockerfile's one install step, and CI runs it on a clean prefix
# (tests/deploy/test_docker.py), so that the image's install is tested without a Docker daemon.
#
#   sh deploy/docker/install.sh SOURCE_DIR PREFIX
#
# PYTHON picks the interpreter (default python3, 3.11 or later). pip's own variables apply
# (the Dockerfile sets PIP_NO_CACHE_DIR; CI keeps pip's cache, so a run does not download
# again what the last one did).
set -eu

src=${1:?usage: install.sh SOURCE_DIR PREFIX}
prefix=${2:?usage: install.sh SOURCE_DIR PREFIX}
python=${PYTHON:-python3}

if [ -e "$prefix" ]; then
    echo "install.sh: $prefix exists; give a new prefix" >&2
    exit 2
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: swarmgate needs Python 3.11 or later" >&2
    exit 2
}
"$python" -m venv "$prefix"
# Not editable, and not from the source's own build directory: the installed copy is all the
# image keeps.
"$prefix/bin/pip" install --quiet "$src"
# Imported from the prefix, not from a source tree on PYTHONPATH.
PYTHONPATH='' "$prefix/bin/python" -c 'import swarmgate.api.app, swarmgate.sim.server'
PYTHONPATH='' "$prefix/bin/swarmgate" --help >/dev/null
echo "swarmgate $(PYTHONPATH='' "$prefix/bin/swarmgate" version) installed in $prefix"
