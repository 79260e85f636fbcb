#!/usr/bin/env bash
# Install the Azurite blob emulator (npm package azurite@3.37.0) into .azurite/ under the
# repository root, for the Azure tests (tests/azure) and benchmarks/azure_ingest.py.
#
# Azurite 3.37 declares engines.node >= 22 but installs and runs on Node 20; npm prints an
# EBADENGINE warning, which is expected. .azurite/ is git-ignored.
#
# Usage: bash .ci/install_azurite.sh        (idempotent: does nothing if already installed)
set -euo pipefail

AZURITE_VERSION="3.37.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${ROOT}/.azurite"
BIN="${PREFIX}/node_modules/.bin/azurite-blob"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install_azurite.sh: node and npm are required (Node 20 or newer); install them first" >&2
    exit 1
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
    echo "install_azurite.sh: Node $(node --version) is too old; Azurite ${AZURITE_VERSION} needs Node 20 or newer" >&2
    exit 1
fi

installed="$(node -p "require('${PREFIX}/node_modules/azurite/package.json').version" 2>/dev/null || true)"
if [[ -x "${BIN}" && "${installed}" == "${AZURITE_VERSION}" ]]; then
    echo "azurite ${AZURITE_VERSION} already installed: ${BIN}"
    exit 0
fi

mkdir -p "${PREFIX}"
# A private package.json keeps npm from walking up and touching anything outside .azurite/.
if [[ ! -f "${PREFIX}/package.json" ]]; then
    echo '{"name": "covid-imaging-azurite", "private": true}' > "${PREFIX}/package.json"
fi
npm install --prefix "${PREFIX}" --no-audit --no-fund --loglevel=error \
    "azurite@${AZURITE_VERSION}"

"${BIN}" --version >/dev/null
echo "azurite ${AZURITE_VERSION} installed: ${BIN}"
