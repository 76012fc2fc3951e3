# Pinned versions of the local stack's tools. Sourced by the setup and stack scripts.
# Changing a version here makes setup build that version into a new cache folder.
TEMPORAL_CLI_VERSION="v1.5.1"
# MinIO publishes no semver tags; this pseudo-version is the newest commit the Go proxy serves
# without replace directives, so `go install` works on it.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
# Per-user cache shared by every clone of this repository (CI runs in a fresh clone).
DPO_CACHE_DIR="${DPO_CACHE_DIR:-$HOME/.cache/dpo-vlm}"
