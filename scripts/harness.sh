#!/usr/bin/env bash
# A real control plane and a real Kafka broker on this machine, for the tests.
#
#   scripts/harness.sh start    etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                               kwok (one fake Ready node) and a single-node KRaft Kafka broker
#                               (listeners: PLAINTEXT, SASL_PLAINTEXT with PLAIN and SCRAM-SHA-256/512,
#                               and SSL requiring client certificates from a throwaway CA)
#   scripts/harness.sh stop     stop everything `start` started (also after a failed start)
#   scripts/harness.sh status   which components run and answer; non-zero if one does not
#   scripts/harness.sh env      print `export KUBECONFIG=… KAFKA_BOOTSTRAP=…` for the tests
#   scripts/harness.sh logs     print the tail of every component's log
#   scripts/harness.sh kafka-stop   stop only the broker (SIGTERM; its data is kept)
#   scripts/harness.sh kafka-start  start the stopped broker again on its data and ports
#
# Environment:
#   INPUTBOT_HARNESS_DIR   state directory (certs, data, logs, pids); default /tmp/inputbot-harness
#   INPUTBOT_PORT_BASE     first of 10 consecutive loopback ports; default 24100
#   INPUTBOT_HARNESS_TIMEOUT  seconds to wait for each component; default 180
#   INPUTBOT_HARNESS_KEEP_ON_FAILURE=1  leave processes running when start fails (to debug)
# Two harnesses coexist when both variables differ. Binaries come from
# scripts/tools.sh (run it first; `start` says so when something is missing).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${INPUTBOT_HARNESS_DIR:-${TMPDIR:-/tmp}/inputbot-harness}"
BASE="${INPUTBOT_PORT_BASE:-24100}"
TIMEOUT="${INPUTBOT_HARNESS_TIMEOUT:-180}"

ETCD_PORT=$((BASE + 0))
ETCD_PEER_PORT=$((BASE + 1))
API_PORT=$((BASE + 2))
CM_PORT=$((BASE + 3))
SCHED_PORT=$((BASE + 4))
KWOK_PORT=$((BASE + 5))
KAFKA_PORT=$((BASE + 6))
KAFKA_CTL_PORT=$((BASE + 7))
KAFKA_SASL_PORT=$((BASE + 8))
KAFKA_SSL_PORT=$((BASE + 9))
KAFKA_PORTS=("$KAFKA_PORT" "$KAFKA_SASL_PORT" "$KAFKA_SSL_PORT")
ALL_PORTS=("$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$CM_PORT" "$SCHED_PORT" "$KWOK_PORT"
  "$KAFKA_PORT" "$KAFKA_CTL_PORT" "$KAFKA_SASL_PORT" "$KAFKA_SSL_PORT")
# Throwaway SASL users of the broker, one per mechanism (passwords are random per start).
KAFKA_PLAIN_USER=inputbot-plain
KAFKA_SCRAM256_USER=inputbot-scram-256
KAFKA_SCRAM512_USER=inputbot-scram-512

# Start order; stop goes in reverse.
COMPONENTS=(kafka etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODE_NAME=kwok-node-0
SERVICE_CIDR=10.96.0.0/16
POD_CIDR=10.244.0.1/16

log() { printf '[harness %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes --

pidfile() { echo "$STATE/pids/$1.pid"; }

# True when the pid in the component's pid file is alive and is ours (its
# command line mentions the state directory: guards against pid reuse).
alive() {
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(<"$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE"
}

# launch NAME CMD...: start CMD in its own session/process group (so stop can
# kill it and all of its children), every fd away from our stdio so that a
# caller reading our output never waits on it.
launch() {
  local name="$1"; shift
  mkdir -p "$STATE/pids" "$STATE/logs"
  setsid "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 &
  local pid=$! i
  echo "$pid" >"$(pidfile "$name")"
  # Until the forked shell has exec'd the command, its cmdline is ours and `alive` would call
  # it dead (and a failed start would then leave it running): wait for the exec, at most 5 s.
  for ((i = 0; i < 100; i++)); do
    [[ -e "/proc/$pid" ]] || break
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE" && break
    sleep 0.05
  done
  log "$name: started (pid $pid, log $STATE/logs/$name.log)"
}

# stop_all NAME…: TERM every process group at once, wait up to 10s for all of them, then
# KILL what is left. The data is throwaway, so nothing waits for a graceful drain.
stop_all() {
  local name pid i pids=() names=()
  for name in "$@"; do
    if alive "$name"; then
      pid="$(<"$(pidfile "$name")")"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
    rm -f "$(pidfile "$name")"
  done
  (( ${#pids[@]} )) || return 0
  local left
  for ((i = 0; i < 100; i++)); do
    left=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && left=1; done
    (( left )) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 -- "-${pids[$i]}" 2>/dev/null; then
      log "${names[$i]}: still running after 10s, killing"
      kill -KILL -- "-${pids[$i]}" 2>/dev/null || true
    fi
    log "${names[$i]}: stopped (pid ${pids[$i]})"
  done
  sleep 0.2
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until NAME WHAT TIMEOUT CMD...: poll CMD until it succeeds; fail if the component's
# process died or the time is up.
wait_until() {
  local name="$1" what="$2" limit="$3" start=$SECONDS; shift 3
  until "$@" >/dev/null 2>&1; do
    if ! alive "$name"; then
      die "$name: exited while waiting for $what (see its log below)"
    fi
    if (( SECONDS - start >= limit )); then
      die "$name: gave up waiting for '$what' after ${limit}s (INPUTBOT_HARNESS_TIMEOUT)"
    fi
    sleep 0.5
  done
  log "$name: $what ($((SECONDS - start))s)"
}

tail_logs() {
  local f
  for f in "$STATE"/logs/*.log; do
    [[ -f "$f" ]] || continue
    printf '\n===== %s (last 30 lines) =====\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# ------------------------------------------------------------------ helpers --

admin_token() { cat "$STATE/pki/admin.token"; }

api() {  # api METHOD PATH [curl args…]
  local method="$1" path="$2"; shift 2
  curl -sS --fail-with-body --max-time 10 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(admin_token)" -X "$method" \
    "https://127.0.0.1:$API_PORT$path" "$@"
}

json_check() {  # json_check PY_EXPR < json: exit 0 when the expression is true for `d`
  python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"
}

write_kubeconfig() {  # FILE USER TOKEN
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: inputbot-harness
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$STATE/pki/ca.crt")
users:
- name: $2
  user:
    token: $3
contexts:
- name: inputbot-harness
  context: {cluster: inputbot-harness, user: $2, namespace: default}
current-context: inputbot-harness
EOF
}

make_pki() {
  local d="$STATE/pki"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj "/CN=inputbot-harness-ca" 2>/dev/null
    cat >apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 2 -extfile apiserver.ext 2>/dev/null
    # One service-account key: signs tokens (apiserver, controller-manager) and verifies them.
    openssl genrsa -out sa.key 2048 2>/dev/null
    local who tok
    : >tokens.csv
    for who in admin kube-controller-manager kube-scheduler kwok; do
      tok="$(openssl rand -hex 24)"
      echo "$tok" >"$who.token"
      case "$who" in
        admin) echo "$tok,admin,uid-admin,\"system:masters\"" >>tokens.csv ;;
        kube-scheduler) echo "$tok,system:kube-scheduler,uid-$who" >>tokens.csv ;;
        *) echo "$tok,system:$who,uid-$who,\"system:masters\"" >>tokens.csv ;;
      esac
    done
    chmod 600 ./*.key ./*.token tokens.csv
  )
  local who
  for who in admin kube-controller-manager kube-scheduler kwok; do
    write_kubeconfig "$STATE/$who.kubeconfig" "$who" "$(<"$d/$who.token")"
  done
}

# --------------------------------------------------------------- components --

# The broker's TLS material and SASL passwords in $STATE/kafka/secure, made on `start` only
# (`kafka-start` reuses them): a throwaway CA, the broker's certificate (SAN 127.0.0.1 and
# localhost), a client certificate of that CA, and a "rogue" client certificate of another CA
# (which the SSL listener must refuse). EC P-256 keys in PKCS#8: fast to make, and the form a
# PEM keystore of the broker reads.
make_kafka_secrets() {
  local d="$STATE/kafka/secure"
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    ca() {  # ca NAME CN
      key "$1.key"
      openssl req -x509 -new -key "$1.key" -out "$1.crt" -days 2 -subj "/CN=$2" 2>/dev/null
    }
    leaf() {  # leaf NAME CN CA EXTENSIONS
      key "$1.key"
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature" "$4" >"$1.ext"
      openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial \
        -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    ca ca inputbot-harness-kafka-ca
    ca rogue-ca inputbot-harness-rogue-ca
    leaf broker localhost ca $'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost'
    leaf client inputbot-e2e-client ca extendedKeyUsage=clientAuth
    leaf rogue-client inputbot-e2e-rogue-client rogue-ca extendedKeyUsage=clientAuth
    # The broker's PEM keystore: its key, then its chain.
    cat broker.key broker.crt ca.crt >broker.pem
    local who
    for who in plain scram-256 scram-512; do openssl rand -hex 16 >"$who.password"; done
  )
}

start_kafka() {
  local d="$STATE/kafka" id s="$STATE/kafka/secure"
  mkdir -p "$d/data"
  make_kafka_secrets
  local plain_pw
  plain_pw="$(<"$s/plain.password")"
  # Listeners: PLAINTEXT (inter-broker and most tests), SASL_PLAINTEXT (PLAIN users from the
  # JAAS line, SCRAM users from the metadata log, written by the storage format below) and
  # SSL with required client certificates. No authorizer: authenticated means allowed.
  cat >"$d/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTL_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_PLAIN_USER="$plain_pw";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$s/broker.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$s/ca.crt
log.dirs=$d/data
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.flush.interval.messages=9223372036854775807
EOF
  cat >"$d/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
  local java_opts broker format id
  kafka_java_opts
  kafka_broker_cmd
  # A cluster id is 16 random bytes in URL-safe base64. Like Kafka's own random-uuid, never one
  # that starts with '-' (1 in 64): tools read such a value as an option.
  id=-
  while [[ "$id" == -* ]]; do id="$(openssl rand 16 | base64 | tr '+/' '-_' | tr -d '=')"; done
  mkdir -p "$STATE/logs"
  # The storage format is a JVM of its own (seconds of CPU): it runs in the broker's process,
  # which then execs the broker, so the control plane starts meanwhile. A failed format ends
  # that process, and the wait for the broker reports it with the logs (kafka-format.log).
  # C1 only for the short-lived format JVM: it starts faster.
  format=(java -XX:TieredStopAtLevel=1 "${java_opts[@]}" -cp "$INPUTBOT_KAFKA_LIBS/*"
    kafka.tools.StorageTool format --cluster-id="$id" -c "$d/server.properties"
    --add-scram "SCRAM-SHA-256=[name=$KAFKA_SCRAM256_USER,password=$(<"$s/scram-256.password")]"
    --add-scram "SCRAM-SHA-512=[name=$KAFKA_SCRAM512_USER,password=$(<"$s/scram-512.password")]")
  (
    umask 077
    {
      echo 'set -e'
      printf '%q ' "${format[@]}"; printf '>%q 2>&1\n' "$STATE/logs/kafka-format.log"
      printf 'exec '; printf '%q ' "${broker[@]}"; echo
    } >"$d/format-and-start.sh"
  )
  launch kafka bash "$d/format-and-start.sh"
}

# Sets the caller's `java_opts` for the broker's JVM.
kafka_java_opts() {
  local d="$STATE/kafka"
  java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$d/log4j2.properties" -Dkafka.logs.dir="$d/logs")
}

# Sets the caller's `broker`: the broker's command line (needs `java_opts`).
kafka_broker_cmd() {
  broker=(java "${java_opts[@]}" -cp "$INPUTBOT_KAFKA_LIBS/*" kafka.Kafka "$STATE/kafka/server.properties")
}

# Starts the broker on the formatted storage and the configuration in $STATE/kafka.
launch_kafka() {
  local java_opts broker
  kafka_java_opts
  kafka_broker_cmd
  launch kafka "${broker[@]}"
}

kafka_ready() {
  local p
  for p in "${KAFKA_PORTS[@]}"; do port_busy "$p" || return 1; done
  grep -q 'Kafka Server started' "$STATE/logs/kafka.log"
}

start_etcd() {
  launch etcd "$INPUTBOT_ETCD" --name=harness --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="harness=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn
}

etcd_ready() {
  curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'
}

start_apiserver() {
  local p="$STATE/pki"
  launch kube-apiserver "$INPUTBOT_KUBE_APISERVER" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$STATE/kube-apiserver" \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --token-auth-file="$p/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$p/sa.key" \
    --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
    --api-audiences="https://kubernetes.default.svc.cluster.local" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --profiling=false \
    --v=1
}

apiserver_ready() {
  [[ "$(api GET /readyz)" == ok ]]
}

# The controller-manager and the scheduler talk to the API server at 200 QPS (defaults 20 and
# 50): at the operator benchmark's 1,000 bots the defaults need over ten minutes to roll out
# 3,000 Deployments through kwok, and the benchmark measures the operator, not that limit.
start_controller_manager() {
  local p="$STATE/pki"
  launch kube-controller-manager "$INPUTBOT_KUBE_CONTROLLER_MANAGER" \
    --kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$CM_PORT" --cert-dir="$STATE/kube-controller-manager" \
    --controllers='*' --leader-elect=false \
    --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --horizontal-pod-autoscaler-sync-period=5s \
    --kube-api-qps=200 --kube-api-burst=400 \
    --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 \
    --profiling=false \
    --v=1
}

start_scheduler() {
  launch kube-scheduler "$INPUTBOT_KUBE_SCHEDULER" \
    --kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$STATE/kube-scheduler" \
    --leader-elect=false \
    --kube-api-qps=200 --kube-api-burst=400 \
    --profiling=false \
    --v=1
}

healthz() { [[ "$(curl -sk --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]; }

start_kwok() {
  # kwok manages only nodes annotated kwok.x-k8s.io/node=fake. Our node carries
  # no kwok.x-k8s.io/node taint, so ordinary Deployments schedule onto it with
  # no toleration.
  launch kwok "$INPUTBOT_KWOK" \
    --kubeconfig="$STATE/kwok.kubeconfig" \
    --config="$INPUTBOT_KWOK_STAGES" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 \
    --node-ip=127.0.0.1 \
    --cidr="$POD_CIDR" \
    --server-address="127.0.0.1:$KWOK_PORT"
}

create_node() {
  api POST /api/v1/nodes -H 'Content-Type: application/json' -o /dev/null -d @- <<EOF
{
  "apiVersion": "v1",
  "kind": "Node",
  "metadata": {
    "name": "$NODE_NAME",
    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
    "labels": {
      "kubernetes.io/hostname": "$NODE_NAME",
      "kubernetes.io/os": "linux",
      "kubernetes.io/arch": "amd64",
      "kubernetes.io/role": "agent",
      "type": "kwok"
    }
  },
  "spec": {},
  "status": {
    "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "5000"},
    "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "5000"}
  }
}
EOF
}

node_ready() {
  api GET "/api/v1/nodes/$NODE_NAME" \
    | json_check 'any(c["type"]=="Ready" and c["status"]=="True" for c in d.get("status",{}).get("conditions",[])) and not d["spec"].get("taints")'
}

default_sa_exists() { api GET /api/v1/namespaces/default/serviceaccounts/default; }

# -------------------------------------------------------------------- verbs --

load_tools() {
  # shellcheck disable=SC1090
  source <("$SCRIPTS/tools.sh" paths)
  "$SCRIPTS/tools.sh" check >/dev/null 2>&1 || {
    "$SCRIPTS/tools.sh" check || true
    die "tools missing: run scripts/tools.sh first"
  }
}

# The broker's extra listeners and their throwaway credentials are named KAFKA_* — never
# INPUTBOT_KAFKA_*, which the runtime reads and the tests' child processes would inherit.
write_env() {
  local s="$STATE/kafka/secure"
  (umask 077; : >"$STATE/harness.env")
  cat >"$STATE/harness.env" <<EOF
export KUBECONFIG='$STATE/admin.kubeconfig'
export KAFKA_BOOTSTRAP='127.0.0.1:$KAFKA_PORT'
export KAFKA_SASL_BOOTSTRAP='127.0.0.1:$KAFKA_SASL_PORT'
export KAFKA_SSL_BOOTSTRAP='127.0.0.1:$KAFKA_SSL_PORT'
export KAFKA_PLAIN_USER='$KAFKA_PLAIN_USER'
export KAFKA_PLAIN_PASSWORD='$(<"$s/plain.password")'
export KAFKA_SCRAM_SHA_256_USER='$KAFKA_SCRAM256_USER'
export KAFKA_SCRAM_SHA_256_PASSWORD='$(<"$s/scram-256.password")'
export KAFKA_SCRAM_SHA_512_USER='$KAFKA_SCRAM512_USER'
export KAFKA_SCRAM_SHA_512_PASSWORD='$(<"$s/scram-512.password")'
export KAFKA_TLS_CA_FILE='$s/ca.crt'
export KAFKA_TLS_CLIENT_CERT_FILE='$s/client.crt'
export KAFKA_TLS_CLIENT_KEY_FILE='$s/client.key'
export KAFKA_TLS_ROGUE_CERT_FILE='$s/rogue-client.crt'
export KAFKA_TLS_ROGUE_KEY_FILE='$s/rogue-client.key'
export INPUTBOT_HARNESS_DIR='$STATE'
export INPUTBOT_PORT_BASE='$BASE'
export INPUTBOT_K8S_VERSION='$INPUTBOT_K8S_VERSION'
export INPUTBOT_HELM='$INPUTBOT_HELM'
export INPUTBOT_KUBECTL='$INPUTBOT_KUBECTL'
EOF
}

cmd_stop() {
  local names=("${COMPONENTS[@]}") f
  # Also any pid file we do not know about (a renamed component, an older version).
  for f in "$STATE"/pids/*.pid; do
    [[ -f "$f" ]] || continue
    [[ " ${names[*]} " == *" $(basename "$f" .pid) "* ]] || names+=("$(basename "$f" .pid)")
  done
  # The API server deregisters itself from etcd on the way down: stop etcd last.
  local first=()
  for f in "${names[@]}"; do [[ "$f" == etcd ]] || first+=("$f"); done
  stop_all "${first[@]}"
  stop_all etcd
  rm -f "$STATE/harness.env"
  local p busy=()
  for p in "${ALL_PORTS[@]}"; do
    port_busy "$p" && busy+=("$p")
  done
  if (( ${#busy[@]} )); then
    sleep 1
    local still=()
    for p in "${busy[@]}"; do port_busy "$p" && still+=("$p"); done
    (( ${#still[@]} == 0 )) || log "warning: ports still in use after stop: ${still[*]}"
  fi
  log "stopped (state kept in $STATE)"
}

on_start_failure() {
  local rc=$?
  trap - EXIT
  (( rc == 0 )) && return 0
  log "start FAILED; component logs:"
  tail_logs
  if [[ "${INPUTBOT_HARNESS_KEEP_ON_FAILURE:-}" == 1 ]]; then
    log "INPUTBOT_HARNESS_KEEP_ON_FAILURE=1: leaving processes running; run '$0 stop' later"
  else
    cmd_stop || true
  fi
  exit "$rc"
}

cmd_start() {
  local t0=$SECONDS
  if [[ -f "$STATE/harness.env" ]] && cmd_status >/dev/null 2>&1; then
    log "already running in $STATE"
    return 0
  fi
  load_tools
  need_cmd curl; need_cmd openssl; need_cmd java; need_cmd python3; need_cmd setsid
  cmd_stop >/dev/null 2>&1 || true
  local p
  for p in "${ALL_PORTS[@]}"; do
    port_busy "$p" && die "port $p is in use: pick other ports with INPUTBOT_PORT_BASE (now $BASE; 10 ports from it)"
  done
  trap on_start_failure EXIT
  # Fresh cluster and broker every start.
  rm -rf "$STATE/etcd" "$STATE/kafka" "$STATE/logs" "$STATE/pki" "$STATE/pids" \
    "$STATE/kube-apiserver" "$STATE/kube-controller-manager" "$STATE/kube-scheduler"
  mkdir -p "$STATE/logs" "$STATE/pids"
  log "state in $STATE, ports $BASE-$((BASE + 9))"
  make_pki
  start_kafka            # the JVM warms up while the control plane starts
  start_etcd
  wait_until etcd "healthy" 60 etcd_ready
  start_apiserver
  wait_until kube-apiserver "ready" "$TIMEOUT" apiserver_ready
  start_controller_manager
  start_scheduler
  start_kwok
  wait_until kube-controller-manager "healthy" "$TIMEOUT" healthz "$CM_PORT"
  wait_until kube-scheduler "healthy" "$TIMEOUT" healthz "$SCHED_PORT"
  wait_until kwok "healthy" "$TIMEOUT" curl -sf --max-time 2 "http://127.0.0.1:$KWOK_PORT/healthz"
  create_node || die "could not create node $NODE_NAME"
  wait_until kwok "node $NODE_NAME Ready" "$TIMEOUT" node_ready
  wait_until kube-controller-manager "default ServiceAccount created" "$TIMEOUT" default_sa_exists
  wait_until kafka "broker started" "$TIMEOUT" kafka_ready
  write_env
  trap - EXIT
  log "harness up in $((SECONDS - t0))s; use: eval \"\$($0 env)\""
}

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH"; }

cmd_status() {
  local bad=0 c state p
  for c in "${COMPONENTS[@]}"; do
    if alive "$c"; then state="running (pid $(<"$(pidfile "$c")"))"; else state="not running"; bad=1; fi
    printf '%-24s %s\n' "$c" "$state"
  done
  if (( bad == 0 )); then
    etcd_ready || { echo "etcd: not healthy"; bad=1; }
    apiserver_ready || { echo "kube-apiserver: not ready"; bad=1; }
    healthz "$CM_PORT" || { echo "kube-controller-manager: not healthy"; bad=1; }
    healthz "$SCHED_PORT" || { echo "kube-scheduler: not healthy"; bad=1; }
    node_ready || { echo "node $NODE_NAME: not Ready"; bad=1; }
    for p in "${KAFKA_PORTS[@]}"; do
      port_busy "$p" || { echo "kafka: port $p closed"; bad=1; }
    done
  fi
  [[ -f "$STATE/harness.env" ]] && cat "$STATE/harness.env"
  return "$bad"
}

# The broker alone, for fault tests: stopped (SIGTERM, KILL after 10 s) keeping its data, and
# started again on the same data and ports.
cmd_kafka_stop() {
  [[ -f "$STATE/harness.env" ]] || die "no harness running in $STATE"
  alive kafka || die "kafka: not running"
  stop_all kafka
  local i p
  for p in "${KAFKA_PORTS[@]}"; do
    for ((i = 0; i < 50; i++)); do port_busy "$p" || break; sleep 0.1; done
    port_busy "$p" && die "kafka: port $p still open after stop"
  done
  return 0
}

cmd_kafka_start() {
  [[ -f "$STATE/harness.env" ]] || die "no harness running in $STATE"
  alive kafka && { log "kafka: already running"; return 0; }
  [[ -f "$STATE/kafka/server.properties" && -f "$STATE/kafka/secure/broker.pem" ]] \
    || die "kafka: no broker data in $STATE/kafka"
  # shellcheck disable=SC1090
  source <("$SCRIPTS/tools.sh" paths)
  launch_kafka
  wait_until kafka "broker started" "$TIMEOUT" kafka_ready
}

cmd_env() {
  [[ -f "$STATE/harness.env" ]] || die "no harness running in $STATE: run '$0 start' (or set INPUTBOT_HARNESS_DIR)"
  cat "$STATE/harness.env"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  logs) tail_logs ;;
  kafka-stop) cmd_kafka_stop ;;
  kafka-start) cmd_kafka_start ;;
  *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
