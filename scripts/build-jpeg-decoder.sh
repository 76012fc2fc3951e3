#!/usr/bin/env bash
# Builds the format stage's JPEG decoder addon (vlm/native/jpegDecode.c, N-API over libjpeg-turbo's
# TurboJPEG; vlm/jpegDecode.ts says why) into the per-user cache:
#   $DPO_CACHE_DIR/tools/jpeg-decoder-<libturbojpeg version>-<source hash>/jpegDecode.node
# beside the libturbojpeg.so.0 it loads (found through its $ORIGIN rpath). The folder is keyed by
# the pinned version and the source, so an edit or a new pin builds anew and vlm/jpegDecode.ts
# computes the same name. Needs a C compiler and Node's headers (node_api.h, installed with
# Node); libturbojpeg comes from Debian's packages (apt-get download, no root needed). Seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
source "$here/versions.sh"
say() { echo "setup: $*"; }
fail() { echo "setup: cannot build the JPEG decoder addon: $*" >&2; exit 1; }

version="$TURBOJPEG_DEB_VERSION"
source_file="$repo/vlm/native/jpegDecode.c"
source_hash="$(sha256sum "$source_file" | cut -c1-12)"
dir="$DPO_CACHE_DIR/tools/jpeg-decoder-${version#*:}-$source_hash"
if [[ -f "$dir/jpegDecode.node" ]]; then exit 0; fi

cc="${CC:-cc}"
command -v "$cc" >/dev/null || fail "no C compiler ($cc); install gcc (Debian: apt-get install gcc)"
node_bin="$(readlink -f "$(command -v node)")"
node_include=""
for d in "$(dirname "$(dirname "$node_bin")")/include/node" /usr/include/node "$HOME/.cache/node-gyp/$(node -p process.versions.node)/include/node"; do
  if [[ -f "$d/node_api.h" ]]; then node_include="$d"; break; fi
done
[[ -n "$node_include" ]] || fail "Node's headers (node_api.h) were not found beside $node_bin or in /usr/include/node; install Node with its headers (the nodejs package does)"

# libturbojpeg's header and library, from the pinned Debian packages.
deb_dir="$DPO_CACHE_DIR/tools/libturbojpeg-${version#*:}"
if [[ ! -f "$deb_dir/usr/include/turbojpeg.h" ]]; then
  command -v apt-get >/dev/null || fail "apt-get is needed to fetch libturbojpeg0 $version (Debian's package)"
  say "fetching libturbojpeg0 and libturbojpeg0-dev $version (Debian packages, ~450 KB; first time only)..."
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  fetch() { (cd "$work" && apt-get download -q "libturbojpeg0=$version" "libturbojpeg0-dev=$version" 2>&1 | grep -v "unsandboxed" || true; ls "$work"/*.deb >/dev/null 2>&1); }
  if ! fetch; then
    # A fresh machine may have no package lists yet.
    if [[ "$(id -u)" == 0 ]]; then apt-get update -qq && fetch || true; fi
    ls "$work"/*.deb >/dev/null 2>&1 || fail "apt-get download libturbojpeg0=$version failed (run apt-get update; if this Debian release has another version, change TURBOJPEG_DEB_VERSION in scripts/versions.sh)"
  fi
  rm -rf "$deb_dir.tmp" && mkdir -p "$deb_dir.tmp"
  for deb in "$work"/*.deb; do dpkg -x "$deb" "$deb_dir.tmp"; done
  rm -rf "$deb_dir" && mv "$deb_dir.tmp" "$deb_dir"
fi
lib="$(ls "$deb_dir"/usr/lib/*/libturbojpeg.so.0 | head -1)"

say "building the JPEG decoder addon (libturbojpeg ${version#*:}) into $dir..."
rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
cp -L "$lib" "$dir.tmp/libturbojpeg.so.0"
# The static libturbojpeg.a cannot go into a shared object (its thread-local error string is
# not position-independent), so the addon loads the shared library from its own folder. That
# library exports only tj* functions: its libjpeg cannot clash with the one inside sharp's libvips.
"$cc" -O2 -Wall -Wextra -shared -fPIC -fvisibility=hidden \
  -I"$node_include" -I"$deb_dir/usr/include" "$source_file" "$dir.tmp/libturbojpeg.so.0" \
  -Wl,-rpath,'$ORIGIN' -o "$dir.tmp/jpegDecode.node"
node -e "const m = require(process.argv[1]); if (typeof m.decode !== 'function') process.exit(1)" "$dir.tmp/jpegDecode.node" \
  || fail "the built addon does not load in this Node"
rm -rf "$dir" && mv "$dir.tmp" "$dir"
say "JPEG decoder addon ready in $dir"
