#!/usr/bin/env bash
# Install what duet needs to build and test on Debian 12. Idempotent; works
# as root or through sudo. Python reference tools are NOT installed here
# (see scripts/setup-reference-venv.sh): the runtime has no Python in it.
set -euo pipefail

packages=(
  build-essential cmake pkg-config    # toolchain
  libpcre2-dev                        # pre-tokenizer regexes
  libjansson-dev                      # JSON (fixtures, later the server)
  libxxhash-dev                       # prefix-cache hashes
  libcmocka-dev                       # tests
  libmicrohttpd-dev                   # duet serve (HTTP)
  libcurl4-openssl-dev                # duet bench serve (HTTP client)
  prometheus                          # promtool: the /metrics format check in tests
  chromium                            # headless dashboard test
  libvulkan-dev libvulkan1            # Vulkan headers + loader (dlopen'ed)
  glslc spirv-tools                   # shaders -> SPIR-V at build time, spirv-val
  mesa-vulkan-drivers                 # lavapipe: Vulkan on the CPU for tests
  vulkan-validationlayers             # VK_LAYER_KHRONOS_validation in tests
  python3 python3-venv python3-pip    # fetching the model from PyPI
  ca-certificates
)

if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  # python3 may come from elsewhere (pyenv): then the Debian package is optional.
  if [ "$p" = python3 ] && command -v python3 >/dev/null; then continue; fi
  if [ "$p" = python3-venv ] && python3 -c 'import venv, ensurepip' 2>/dev/null; then continue; fi
  if [ "$p" = python3-pip ] && python3 -m pip --version >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install: all packages present"
  exit 0
fi
echo "install: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
