#!/bin/sh
# The images' virtual environment /opt/glmserve (images/*/Dockerfile run it):
#   venv.sh lock LOCK [PIP_OPTION...]   create it with exactly LOCK (--no-deps: the lock is complete,
#                                       so nothing is resolved again at build time)
#   venv.sh project DIR                 add glmserve from DIR, then drop pip (nothing installs at run time)
set -eu
case ${1:-} in
  lock)
    lock=$2
    shift 2
    python3 -m venv /opt/glmserve
    # xds-protos also installs old copies of other projects' modules (scripts/locks.py BUNDLERS):
    # installed first, the owners' files then overwrite them.
    grep '^xds-protos==' "$lock" | cut -d' ' -f1 | xargs /opt/glmserve/bin/pip install --no-cache-dir --no-deps "$@"
    /opt/glmserve/bin/pip install --no-cache-dir --no-deps "$@" -r "$lock"
    ;;
  project)
    /opt/glmserve/bin/pip install --no-cache-dir --no-deps "$2"
    /opt/glmserve/bin/pip uninstall -y pip
    ;;
  *) echo "venv.sh: lock LOCK [PIP_OPTION...] | project DIR" >&2; exit 2 ;;
esac
