#!/usr/bin/env bash
# Build the container images of inputbot without a container engine: an OCI image layout
# per image, written by umoci from the binaries cargo already built.
#
#   scripts/images.sh                   both images (operator, runtime)
#   scripts/images.sh IMAGE…            only these (operator runtime)
#   scripts/images.sh rootfs IMAGE DIR [BIN]
#                                       only assemble IMAGE's root filesystem in DIR (from BIN,
#                                       default the cargo-built binary); images/Dockerfile
#                                       uses this, so both ways build the same file system
#
# Environment:
#   CARGO_TARGET_DIR          where the binaries are and the images go
#                             (default ~/.cache/inputbot/target)
#   INPUTBOT_IMAGES_PROFILE   cargo profile of the binaries: debug (default) or release
#   INPUTBOT_UMOCI            the umoci binary (default: umoci on PATH; scripts/tools.sh images)
#   SOURCE_DATE_EPOCH         timestamp of every file and of the image (default: HEAD's commit
#                             time), so that the same binaries give the same image digest
#
# Writes $CARGO_TARGET_DIR/images/<image>/ (an OCI layout, tags `<version>` and `latest`),
# importable with e.g. `skopeo copy oci:<dir>:latest docker-daemon:inputbot/inputbot:dev`.
# An image whose inputs (binary, libraries, this script) did not change is not rebuilt.
#
# No base image can be pulled here, so the root filesystem is assembled from scratch:
#   /usr/local/bin/<binary>        debug info stripped
#   the shared libraries `ldd` names and the dynamic loader, at the paths ldd gives
#   /etc/passwd, /etc/group        root, nonroot (65532) and nobody
#   /etc/nsswitch.conf             `hosts: files dns`, so /etc/hosts (hostAliases) is read first
#   /etc/ssl/certs/ca-certificates.crt   the CA bundle (SSL_CERT_FILE points at it)
#   /tmp                           mode 1777 (the bot pods mount an emptyDir there)
# and nothing else: no shell, no package manager. The user is numeric (65532:65532), so the
# kubelet can verify `runAsNonRoot` — the operator's rendered Deployments and the chart rely on it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/images.sh"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/inputbot/target}"
PROFILE="${INPUTBOT_IMAGES_PROFILE:-debug}"
OUT="$TARGET/images"
UID_NONROOT=65532

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# image → binary, exposed port, default arguments (the chart's and the operator's Deployments
# set only `args`, so the ENTRYPOINT must be the binary itself).
binary_of() {
  case "$1" in
    operator) echo inputbot-operator ;;
    runtime) echo inputbot ;;
    *) die "unknown image '$1' (known: operator runtime)" ;;
  esac
}
cmd_of() {
  case "$1" in
    operator) echo run ;;      # `docker run <operator image>` runs the controllers
    runtime) echo --help ;;    # the roles need a config: the operator's Deployments pass args
  esac
}

# rootfs IMAGE DIR [BIN]: assemble the root filesystem (no umoci needed).
assemble_rootfs() {
  local image="$1" dir="$2" bin="${3:-}" name
  name="$(binary_of "$image")"
  [[ -n "$bin" ]] || bin="$TARGET/$PROFILE/$name"
  [[ -x "$bin" ]] || die "$bin is missing: build it first (cargo build -p inputbot-operator -p inputbot-runtime --bins)"
  command -v ldd >/dev/null || die "ldd is not on PATH (Debian: libc-bin)"
  command -v objcopy >/dev/null || die "objcopy is not on PATH (Debian: binutils)"
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -s "$ca" ]] || die "$ca is missing (Debian: ca-certificates)"

  rm -rf "$dir"
  mkdir -p "$dir/usr/local/bin" "$dir/etc/ssl/certs"
  objcopy --strip-debug "$bin" "$dir/usr/local/bin/$name"
  chmod 0755 "$dir/usr/local/bin/$name"

  # Exactly what the dynamic linker loads: `ldd` lines are `libx.so => /path (0x…)` and the
  # loader's own `/lib64/ld-linux-x86-64.so.2 (0x…)`. Copied as files (not symlinks) at the
  # paths the binary asks for.
  local libs
  libs="$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)"
  [[ -n "$libs" ]] || die "ldd names no library for $bin: is it dynamically linked?"
  if ldd "$bin" | grep -q 'not found'; then
    die "ldd cannot resolve every library of $bin: $(ldd "$bin" | grep 'not found' | tr -s ' \t' ' ')"
  fi
  local lib
  for lib in $libs; do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done

  printf '%s\n' \
    'root:x:0:0:root:/root:/sbin/nologin' \
    "nonroot:x:$UID_NONROOT:$UID_NONROOT:nonroot:/home/nonroot:/sbin/nologin" \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' > "$dir/etc/passwd"
  printf '%s\n' 'root:x:0:' "nonroot:x:$UID_NONROOT:" 'nogroup:x:65534:' > "$dir/etc/group"
  printf 'hosts: files dns\n' > "$dir/etc/nsswitch.conf"
  cp -L "$ca" "$dir/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$dir/etc/passwd" "$dir/etc/group" "$dir/etc/nsswitch.conf" "$dir/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$dir/tmp"
  chmod 1777 "$dir/tmp"

  local epoch="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
  find "$dir" -exec touch -h -d "@$epoch" {} +
}

# What an image is made of: when this does not change, the image does not either.
inputs_digest() {
  local image="$1" bin="$2"
  {
    sha256sum "$bin" "$SELF"
    ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | xargs -r sha256sum
    echo "image=$image epoch=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
  } | sha256sum | cut -d' ' -f1
}

build_image() {
  local image="$1" name bin layout stage version digest epoch created
  name="$(binary_of "$image")"
  bin="$TARGET/$PROFILE/$name"
  [[ -x "$bin" ]] || die "$bin is missing: build it first (cargo build -p inputbot-operator -p inputbot-runtime --bins)"
  layout="$OUT/$image"
  stage="$OUT/.$image.rootfs"
  digest="$(inputs_digest "$image" "$bin")"
  if [[ -f "$layout/.inputs" && "$(cat "$layout/.inputs")" == "$digest" ]]; then
    log "$image: up to date ($layout)"
    return 0
  fi
  # `inputbot 0.1.0` → 0.1.0
  version="$("$bin" --version | awk '{print $2}')"
  [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "$bin --version printed '$version', not a version"
  epoch="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"

  local start=$SECONDS
  assemble_rootfs "$image" "$stage" "$bin"
  rm -rf "$layout"
  mkdir -p "$OUT"
  local img="$layout:$version"
  "$UMOCI" init --layout "$layout"
  "$UMOCI" new --image "$img"
  # The layer is written by GNU tar, not `umoci insert` (umoci 0.4.7's insert leaves out the
  # tar's final padding and end-of-archive blocks): sorted, root-owned, one timestamp.
  (cd "$stage" && tar --create --file "$OUT/.$image.layer.tar" --format=ustar --sort=name \
    --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -- *)
  "$UMOCI" raw add-layer --image "$img" --history.created "$created" \
    --history.created_by "scripts/images.sh $image" "$OUT/.$image.layer.tar"
  local cfg=(
    --config.user "$UID_NONROOT:$UID_NONROOT"
    --config.entrypoint "/usr/local/bin/$name"
    --config.cmd "$(cmd_of "$image")"
    --config.workingdir /
    --config.env PATH=/usr/local/bin
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.version=$version"
    --config.label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
    --created "$created" --history.created "$created"
    --history.created_by "scripts/images.sh $image (config)"
    --os linux --architecture amd64
  )
  # Both serve HTTP on 8080: the runtime its webhooks and probes, the operator its metrics.
  cfg+=(--config.exposedports 8080/tcp)
  "$UMOCI" config --image "$img" "${cfg[@]}"
  "$UMOCI" tag --image "$img" latest
  "$UMOCI" gc --layout "$layout"
  rm -rf "$stage" "$OUT/.$image.layer.tar"
  echo "$digest" > "$layout/.inputs"
  log "$image: $layout ($name $version, $(du -sh --apparent-size "$layout/blobs" | cut -f1) of blobs) in $((SECONDS - start))s"
}

main() {
  if [[ "${1:-}" == rootfs ]]; then
    (( $# >= 3 )) || die "usage: scripts/images.sh rootfs IMAGE DIR [BIN]"
    assemble_rootfs "$2" "$3" "${4:-}"
    return 0
  fi
  case "${1:-}" in -h|--help) sed -n '2,33p' "$SELF" | sed 's/^# \{0,1\}//'; return 0 ;; esac
  UMOCI="$(command -v "${INPUTBOT_UMOCI:-umoci}" || true)"
  [[ -n "$UMOCI" ]] || die "umoci (${INPUTBOT_UMOCI:-umoci}) is not installed: run scripts/tools.sh images"
  local images=("$@") i
  (( ${#images[@]} )) || images=(operator runtime)
  for i in "${images[@]}"; do binary_of "$i" >/dev/null; done
  for i in "${images[@]}"; do build_image "$i"; done
}

main "$@"
