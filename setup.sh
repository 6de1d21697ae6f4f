#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system packages (FFmpeg, GStreamer's RTSP server, Xvfb for the
# overlay tests, PostgreSQL and openssl for the TLS test), then a virtual environment in .venv with the pinned Python
# dependencies.
#   ./setup.sh            everything
#   SKIP_APT=1 ./setup.sh only the Python side (no root needed)
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(ffmpeg xvfb xdotool imagemagick python3-gi gir1.2-gst-rtsp-server-1.0
              gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
              gstreamer1.0-libav libgl1 libglib2.0-0
              postgresql openssl)  # the TLS cluster test: Debian's PostgreSQL has SSL (the embedded wheel's has not)

if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
    echo "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
# constraints.txt pins the whole resolved set; torch==2.14.1 keeps pip off any local CPU-only torch wheel,
# which would break torchvision (and with it Ultralytics).
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,cluster]"
.venv/bin/python -c "import torch, torchvision, ultralytics, cv2, zmq, onnxruntime; print('environment ready: torch',
 torch.__version__, 'torchvision', torchvision.__version__, 'ultralytics', ultralytics.__version__)"
