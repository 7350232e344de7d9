#!/usr/bin/env bash
# Local development stack: Kafka 4.0.2 (KRaft, one combined broker+controller, run from
# Maven Central jars), Redis, Alertmanager (Debian's prometheus-alertmanager, delivering
# every alert to the alerts service's local sink), and the platform services listed in
# deploy/local/services.txt.
#
# Usage: deploy/local/stack.sh <command>
#   install        resolve the Kafka jars (once); install redis-server and
#                  prometheus-alertmanager if missing
#   up             install, start Redis and Kafka, create topics, start Alertmanager and
#                  the services
#   down           stop the services, Alertmanager, Kafka and Redis (only processes whose
#                  pid files we wrote)
#   status         show what is running
#   infra-up       Redis + Kafka + topics + Alertmanager only
#   services-up    start the services in services.txt (skips modules that do not exist yet)
#   services-down  stop the services
#   is-up          exit 0 if Kafka and Redis are running
#   kafka-up, redis-up, alertmanager-up                start only that one
#   kafka-down, redis-down, alertmanager-down [--kill] stop only that one (SIGTERM;
#                                                      SIGKILL with --kill)
#
# Environment: KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092; the controller listens on
# port+1), REDIS_URL (default redis://127.0.0.1:6379/0), ALERTS_ALERTMANAGER_URL (default
# http://127.0.0.1:9095: where Alertmanager listens), ALERTS_SINK_PORT (default 9471:
# the sink Alertmanager delivers to), CX_VAR_DIR (default <repo>/var: pid files, logs,
# data), CX_CACHE_DIR (default ~/.cache/cx-platform: Kafka jars), CX_REDIS_APPENDFSYNC
# (default everysec), the replica counts services.txt names (PROFILE_WORKERS, default 1)
# and the metrics ports they derive from.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
cd "$REPO_ROOT"

VAR_DIR=${CX_VAR_DIR:-$REPO_ROOT/var}
CACHE_DIR=${CX_CACHE_DIR:-$HOME/.cache/cx-platform}
RUN_DIR=$VAR_DIR/run
LOG_DIR=$VAR_DIR/log
KAFKA_DIR=$VAR_DIR/kafka
KAFKA_DATA_DIR=$KAFKA_DIR/data
REDIS_DIR=$VAR_DIR/redis
ALERTMANAGER_DIR=$VAR_DIR/alertmanager
ALERTMANAGER_CONFIG=$ALERTMANAGER_DIR/alertmanager.yml
REDIS_APPENDFSYNC=${CX_REDIS_APPENDFSYNC:-everysec}

KAFKA_VERSION=4.0.2
KAFKA_POM=$SCRIPT_DIR/kafka/pom.xml
KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_MARKER=$KAFKA_HOME/.resolved
KAFKA_CONFIG=$KAFKA_DIR/server.properties
KAFKA_LOG4J=$KAFKA_DIR/log4j2.xml
KAFKA_HEAP_OPTS=${CX_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}
KAFKA_START_TIMEOUT=90

SERVICES_FILE=$SCRIPT_DIR/services.txt
PYTHON=${CX_PYTHON:-$REPO_ROOT/.venv/bin/python}
SERVICE_START_TIMEOUT=60
STOP_TIMEOUT=20

# --- endpoints from the environment ---------------------------------------------------------

KAFKA_BOOTSTRAP=${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}
_first=${KAFKA_BOOTSTRAP%%,*}
_first=${_first#*://}
KAFKA_HOST=${_first%:*}
KAFKA_PORT=${_first##*:}
[[ $KAFKA_HOST == "$_first" ]] && KAFKA_PORT=9092 # no port given
[[ -n $KAFKA_HOST ]] || KAFKA_HOST=127.0.0.1
CONTROLLER_PORT=$((KAFKA_PORT + 1))

REDIS_URL_=${REDIS_URL:-redis://127.0.0.1:6379/0}
_hostport=${REDIS_URL_#*://}
_hostport=${_hostport%%/*}
_hostport=${_hostport##*@}
if [[ $_hostport == *:* ]]; then REDIS_PORT=${_hostport##*:}; else REDIS_PORT=6379; fi

# Alertmanager listens where the alerts service looks for it (ALERTS_ALERTMANAGER_URL) and
# delivers to the alerts service's local sink (ALERTS_SINK_PORT).
ALERTMANAGER_URL_=${ALERTS_ALERTMANAGER_URL:-http://127.0.0.1:9095}
_hostport=${ALERTMANAGER_URL_#*://}
_hostport=${_hostport%%/*}
if [[ $_hostport == *:* ]]; then ALERTMANAGER_PORT=${_hostport##*:}; else ALERTMANAGER_PORT=80; fi
ALERTMANAGER_HOST=${_hostport%:*}
[[ -n $ALERTMANAGER_HOST ]] || ALERTMANAGER_HOST=127.0.0.1
ALERTS_SINK_PORT_=${ALERTS_SINK_PORT:-9471}

for _p in "$KAFKA_PORT" "$REDIS_PORT" "$ALERTMANAGER_PORT" "$ALERTS_SINK_PORT_"; do
  [[ $_p =~ ^[0-9]+$ ]] || { echo "stack: cannot parse a port from '$_p'" >&2; exit 2; }
done
case $REDIS_APPENDFSYNC in
  always | everysec | no) ;;
  *) echo "stack: CX_REDIS_APPENDFSYNC must be always, everysec or no" >&2; exit 2 ;;
esac

# --- helpers ----------------------------------------------------------------------------------

say() { printf '==> %s\n' "$*"; }
warn() { printf 'stack: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

pid_file() { echo "$RUN_DIR/$1.pid"; }

# What a live process's command line must contain to be ours (guards against pid reuse).
process_match() {
  case $1 in
    kafka) echo "kafka.Kafka" ;;
    redis) echo "redis-server" ;;
    alertmanager) echo "alertmanager" ;;
    *) service_field "$(service_of "$1")" 3 ;;
  esac
}

# Prints the pid of component $1 if its pid file names a live process of ours; otherwise
# removes a stale pid file and returns 1.
running_pid() {
  local name=$1 file pid match cmd
  file=$(pid_file "$name")
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    match=$(process_match "$name")
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
    # An empty command line: the process is between two execs (nohup, setsid, the
    # command) and cannot be told from another yet; it is taken to be ours, not stale.
    if [[ -z $match || -z $cmd || $cmd == *"$match"* ]]; then
      echo "$pid"
      return 0
    fi
  fi
  rm -f "$file"
  return 1
}

# Starts a command in its own session in the background; records its pid.
spawn() {
  local name=$1 log=$2 pid match i
  shift 2
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  printf '\n=== %s: starting %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$name" >>"$log"
  # Without job control the child is not a process-group leader, so setsid execs in place
  # and $! is the pid of the command itself.
  # 9>&-: the stack lock is not handed down to the services.
  nohup setsid "$@" >>"$log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$(pid_file "$name")"
  # Until the exec chain (nohup, setsid) reaches the command, running_pid would not
  # recognise the process and would treat the pid file as stale.
  match=$(process_match "$name")
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" && return 0
    sleep 0.05
  done
}

# Stops component $1: SIGTERM, then SIGKILL after STOP_TIMEOUT; or signal $2 (KILL) at once.
stop_component() {
  local name=$1 sig=${2:-TERM} pid i
  if ! pid=$(running_pid "$name"); then
    say "$name: not running"
    return 0
  fi
  say "$name: stopping (pid $pid, SIG$sig)"
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pid_file "$name")"
  say "$name: stopped"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The components the stack runs besides the services (their pid files are not services').
is_infra() { [[ $1 == kafka || $1 == redis || $1 == alertmanager ]]; }

show_log_tail() {
  local f
  for f in "$@"; do
    [[ -f $f ]] || continue
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}

file_size() { if [[ -f $1 ]]; then stat -c %s "$1"; else echo 0; fi; }

# Tail of what was appended to file $1 since it had size $2 (all of it if it was rotated).
show_new_log() {
  local f=$1 from=$2
  [[ -f $f ]] || return 0
  (($(file_size "$f") >= from)) || from=0
  printf -- '--- last lines of %s ---\n' "$f" >&2
  tail -c +$((from + 1)) "$f" | tail -n 40 >&2
}

# --- install ----------------------------------------------------------------------------------

install_kafka() {
  local pom_hash
  pom_hash=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
  if [[ -f $KAFKA_MARKER && $(<"$KAFKA_MARKER") == "$pom_hash" ]] &&
    compgen -G "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    return 0
  fi
  command -v java >/dev/null || die "java not found (Kafka needs Java 17+)"
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
  say "kafka: resolving Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  mkdir -p "$KAFKA_HOME"
  rm -rf "$KAFKA_LIBS.tmp"
  # Debian's Maven 3.8 prints stray colour resets even with -q; strip them (pipefail keeps
  # Maven's exit status).
  mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIBS.tmp" -DincludeScope=runtime 2>&1 |
    sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' ||
    die "Maven could not resolve the Kafka jars"
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  echo "$pom_hash" >"$KAFKA_MARKER"
  say "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars ready"
}

install_redis() {
  command -v redis-server >/dev/null && return 0
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "redis-server is missing and not running as root"
    sudo=(sudo)
  fi
  say "redis: installing redis-server with apt-get"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server
  # The package starts a system-wide Redis on 6379; the stack runs its own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet redis-server 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now redis-server || true
  fi
}

# Debian's package is prometheus-alertmanager; an upstream `alertmanager` on PATH works too.
alertmanager_bin() {
  command -v prometheus-alertmanager || command -v alertmanager
}

install_alertmanager() {
  alertmanager_bin >/dev/null && return 0
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "prometheus-alertmanager is missing and not running as root"
    sudo=(sudo)
  fi
  say "alertmanager: installing prometheus-alertmanager with apt-get"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq prometheus-alertmanager
  alertmanager_bin >/dev/null || die "alertmanager: installed, but prometheus-alertmanager is not on PATH"
  # Under an init system the package starts a system-wide Alertmanager on 9093 (the local
  # Kafka controller's port); the stack runs its own.
  if command -v systemctl >/dev/null &&
    systemctl is-active --quiet prometheus-alertmanager 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus-alertmanager || true
  fi
}

cmd_install() {
  install_kafka
  install_redis
  install_alertmanager
}

# --- Redis ------------------------------------------------------------------------------------

start_redis() {
  local pid i
  if pid=$(running_pid redis); then
    say "redis: already running (pid $pid, port $REDIS_PORT)"
    return 0
  fi
  if port_open 127.0.0.1 "$REDIS_PORT"; then
    die "redis: port $REDIS_PORT is already in use by a process this script did not start"
  fi
  mkdir -p "$REDIS_DIR"
  local from
  from=$(file_size "$LOG_DIR/redis.log")
  say "redis: starting on 127.0.0.1:$REDIS_PORT (appendfsync $REDIS_APPENDFSYNC, data in $REDIS_DIR)"
  spawn redis "$LOG_DIR/redis.log" redis-server \
    --bind 127.0.0.1 --port "$REDIS_PORT" \
    --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save "" \
    --dir "$REDIS_DIR" --daemonize no --protected-mode yes \
    --logfile "$LOG_DIR/redis.log"
  for ((i = 0; i < 100; i++)); do
    if [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; then
      say "redis: up (pid $(<"$(pid_file redis)"))"
      return 0
    fi
    running_pid redis >/dev/null || break
    sleep 0.2
  done
  show_new_log "$LOG_DIR/redis.log" "$from"
  stop_component redis >/dev/null
  die "redis: did not answer PING"
}

# --- Alertmanager -----------------------------------------------------------------------------

# Every alert goes to the alerts service's sink, one notification group per incident (its
# dedup key), with short waits so that tests and the demo see pages within seconds.
alertmanager_config() {
  cat <<EOF
# Written by deploy/local/stack.sh; regenerated on every start.
route:
  receiver: cx-alerts-sink
  group_by: [alertname, team, dedup_key]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 4h
receivers:
  - name: cx-alerts-sink
    webhook_configs:
      - url: http://127.0.0.1:$ALERTS_SINK_PORT_/alertmanager/webhook
        send_resolved: true
EOF
}

# GET /api/v2/status answers 200 (plain bash: curl need not be installed).
alertmanager_answers() {
  local status
  # shellcheck disable=SC2016 # expanded by the inner shell
  status=$(timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" &&
    printf "GET /api/v2/status HTTP/1.0\r\nHost: %s\r\n\r\n" "$1" >&3 && head -n 1 <&3' \
    _ "$ALERTMANAGER_HOST" "$ALERTMANAGER_PORT" 2>/dev/null) || return 1
  [[ $status == HTTP/1.?" 200"* ]]
}

start_alertmanager() {
  local pid i bin from config
  mkdir -p "$ALERTMANAGER_DIR" "$LOG_DIR"
  config=$(alertmanager_config)
  if pid=$(running_pid alertmanager); then
    # A changed configuration (another sink port) is reloaded in place.
    if [[ $config != "$(cat "$ALERTMANAGER_CONFIG" 2>/dev/null)" ]]; then
      printf '%s\n' "$config" >"$ALERTMANAGER_CONFIG"
      kill -HUP "$pid"
      say "alertmanager: configuration changed, reloaded"
    fi
    say "alertmanager: already running (pid $pid, $ALERTMANAGER_HOST:$ALERTMANAGER_PORT)"
    return 0
  fi
  if [[ $ALERTMANAGER_PORT == "$KAFKA_PORT" || $ALERTMANAGER_PORT == "$CONTROLLER_PORT" ]]; then
    die "alertmanager: port $ALERTMANAGER_PORT is Kafka's; set ALERTS_ALERTMANAGER_URL to another"
  fi
  if port_open 127.0.0.1 "$ALERTMANAGER_PORT"; then
    die "alertmanager: port $ALERTMANAGER_PORT is already in use by a process this script did not start"
  fi
  bin=$(alertmanager_bin) || die "alertmanager: not installed (run: $0 install)"
  printf '%s\n' "$config" >"$ALERTMANAGER_CONFIG"
  from=$(file_size "$LOG_DIR/alertmanager.log")
  say "alertmanager: starting on $ALERTMANAGER_HOST:$ALERTMANAGER_PORT (delivering to 127.0.0.1:$ALERTS_SINK_PORT_)"
  # An empty --cluster.listen-address: no gossip port, one instance on its own.
  spawn alertmanager "$LOG_DIR/alertmanager.log" "$bin" \
    --config.file="$ALERTMANAGER_CONFIG" \
    --storage.path="$ALERTMANAGER_DIR/data" \
    --web.listen-address="$ALERTMANAGER_HOST:$ALERTMANAGER_PORT" \
    --cluster.listen-address=
  for ((i = 0; i < 150; i++)); do
    if alertmanager_answers; then
      say "alertmanager: up (pid $(<"$(pid_file alertmanager)"))"
      return 0
    fi
    running_pid alertmanager >/dev/null || break
    sleep 0.2
  done
  show_new_log "$LOG_DIR/alertmanager.log" "$from"
  stop_component alertmanager >/dev/null
  die "alertmanager: did not answer GET /api/v2/status"
}

# --- Kafka ------------------------------------------------------------------------------------

write_kafka_config() {
  mkdir -p "$KAFKA_DIR" "$KAFKA_DATA_DIR" "$LOG_DIR"
  cat >"$KAFKA_CONFIG" <<EOF
# Written by deploy/local/stack.sh; regenerated on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA_DIR
num.partitions=8
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
# After a restart the controller keeps the previous broker registration until its session
# expires (default 9 s), which delays the broker's startup by that long. Shorter for local use.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
EOF
  cat >"$KAFKA_LOG4J" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by deploy/local/stack.sh: the broker logs to $LOG_DIR/kafka-server.log. -->
<!-- shutdownHook="disable": log4j2's own hook would stop logging before the broker's
     shutdown hook has finished, losing the controlled-shutdown lines. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <RollingFile name="server" fileName="$LOG_DIR/kafka-server.log"
                 filePattern="$LOG_DIR/kafka-server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="50 MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="INFO"/>
    <Logger name="state.change.logger" level="INFO"/>
    <Logger name="kafka.authorizer.logger" level="INFO"/>
  </Loggers>
</Configuration>
EOF
}

format_kafka_storage() {
  if [[ -f $KAFKA_DATA_DIR/meta.properties ]]; then
    return 0
  fi
  local cluster_id
  cluster_id=$(java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    kafka.tools.StorageTool random-uuid | tail -n 1)
  say "kafka: formatting storage in $KAFKA_DATA_DIR (cluster id $cluster_id)"
  java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_CONFIG" >>"$LOG_DIR/kafka.log" 2>&1 ||
    { show_log_tail "$LOG_DIR/kafka.log"; die "kafka: storage format failed"; }
}

start_kafka() {
  local pid waiter started out_from server_from p
  if pid=$(running_pid kafka); then
    say "kafka: already running (pid $pid, $KAFKA_HOST:$KAFKA_PORT)"
    return 0
  fi
  for p in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    if port_open 127.0.0.1 "$p"; then
      die "kafka: port $p is already in use by a process this script did not start"
    fi
  done
  write_kafka_config
  format_kafka_storage
  say "kafka: starting broker+controller on $KAFKA_HOST:$KAFKA_PORT (controller :$CONTROLLER_PORT)"
  started=$SECONDS
  out_from=$(file_size "$LOG_DIR/kafka.log")
  server_from=$(file_size "$LOG_DIR/kafka-server.log")
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
  spawn kafka "$LOG_DIR/kafka.log" java $KAFKA_HEAP_OPTS -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONFIG"
  # Wait for a metadata answer, but give up at once if the broker process dies.
  "$PYTHON" -m services.common.kafka_admin --bootstrap "$KAFKA_HOST:$KAFKA_PORT" \
    wait --timeout "$KAFKA_START_TIMEOUT" &
  waiter=$!
  while kill -0 "$waiter" 2>/dev/null; do
    if ! running_pid kafka >/dev/null; then
      kill "$waiter" 2>/dev/null || true
      wait "$waiter" 2>/dev/null || true
      show_new_log "$LOG_DIR/kafka.log" "$out_from"
      show_new_log "$LOG_DIR/kafka-server.log" "$server_from"
      die "kafka: the broker process exited during startup"
    fi
    sleep 0.5
  done
  if ! wait "$waiter"; then
    show_new_log "$LOG_DIR/kafka.log" "$out_from"
    show_new_log "$LOG_DIR/kafka-server.log" "$server_from"
    stop_component kafka >/dev/null
    die "kafka: broker did not come up within ${KAFKA_START_TIMEOUT}s"
  fi
  say "kafka: up (pid $(<"$(pid_file kafka)"), $((SECONDS - started))s)"
}

ensure_topics() {
  say "kafka: ensuring topics"
  "$PYTHON" -m services.common.kafka_admin --bootstrap "$KAFKA_HOST:$KAFKA_PORT" ensure-topics ||
    die "kafka: could not create topics"
}

# --- services ---------------------------------------------------------------------------------

# Prints "name port module replicas-var metrics-var metrics-default port-var" for each
# service line of services.txt, "-" for an option the line does not give.
service_lines() {
  [[ -f $SERVICES_FILE ]] || return 0
  local line opt replicas metrics_var metrics_default port_var
  local -a f
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}
    read -r -a f <<<"$line" || true
    ((${#f[@]} == 0)) && continue
    if ((${#f[@]} < 3)); then
      warn "services.txt: ignoring malformed line: $line"
      continue
    fi
    replicas=- metrics_var=- metrics_default=- port_var=-
    for opt in "${f[@]:3}"; do
      case $opt in
        replicas=?*) replicas=${opt#replicas=} ;;
        port=?*) port_var=${opt#port=} ;;
        metrics=?*:?*)
          metrics_var=${opt#metrics=}
          metrics_default=${metrics_var#*:}
          metrics_var=${metrics_var%%:*}
          ;;
        *) warn "services.txt: ignoring unknown option '$opt' of ${f[0]}" ;;
      esac
    done
    echo "${f[0]} ${f[1]} ${f[2]} $replicas $metrics_var $metrics_default $port_var"
  done <"$SERVICES_FILE"
}

# Field $2 (1=name 2=port 3=module 4=replicas-var 5=metrics-var 6=metrics-default
# 7=port-var) of the service named $1, or nothing.
service_field() {
  local -a f
  while read -r -a f; do
    if [[ ${f[0]} == "$1" ]]; then
      echo "${f[$2 - 1]}"
      return 0
    fi
  done < <(service_lines)
}

# The service an instance belongs to: profile-worker-2 is an instance of profile-worker
# when that service has replicas; any other name is its own service.
service_of() {
  local base
  if [[ $1 =~ ^(.+)-[0-9]+$ ]]; then
    base=${BASH_REMATCH[1]}
    if [[ $(service_field "$base" 4) == ?* && $(service_field "$base" 4) != - ]]; then
      echo "$base"
      return 0
    fi
  fi
  echo "$1"
}

# Instance $2 (from 0) of service $1: the first keeps the service's name (and pid and log
# files), the others are <name>-<index>.
instance_name() {
  if (($2 == 0)); then echo "$1"; else echo "$1-$2"; fi
}

# How many instances to run: the value of the variable named $1 (1 when unset), or 1 when
# the service has no replicas option.
replica_count() {
  local n
  if [[ $1 == - ]]; then
    echo 1
    return 0
  fi
  n=${!1:-1}
  [[ $n =~ ^[0-9]+$ ]] || die "$1 must be a number of instances, not '$n'"
  echo $((10#$n))
}

# The metrics port of instance $3: the variable named $1 (default $2) plus the index; 0
# (metrics off) stays 0.
metrics_port() {
  local base=${!1:-$2}
  [[ $base =~ ^[0-9]+$ ]] || die "$1 must be a port number, not '$base'"
  base=$((10#$base))
  if ((base == 0)); then echo 0; else echo $((base + $3)); fi
}

# Exits with a message when a replica count or metrics port in the environment is not a
# number, or a service with replicas has a port every replica would need.
check_service_settings() {
  local name port module rvar mvar mdef
  while read -r name port module rvar mvar mdef _; do
    if [[ $rvar != - ]]; then
      replica_count "$rvar" >/dev/null
      [[ $port == - ]] || die "services.txt: $name has a port, so it cannot have replicas"
    fi
    [[ $mvar == - ]] || metrics_port "$mvar" "$mdef" 0 >/dev/null
  done < <(service_lines)
}

# Prints "instance port module metrics-var metrics-port" for each instance to run, in
# services.txt order ("-" where the service has no metrics option).
service_instances() {
  local name port module rvar mvar mdef count i mport
  while read -r name port module rvar mvar mdef _; do
    count=$(replica_count "$rvar")
    for ((i = 0; i < count; i++)); do
      mport=-
      [[ $mvar == - ]] || mport=$(metrics_port "$mvar" "$mdef" "$i")
      echo "$(instance_name "$name" "$i") $port $module $mvar $mport"
    done
  done < <(service_lines)
}

# Instances of service $1 that have a pid file but an index of $2 or more.
surplus_instances() {
  local file inst index
  for file in "$RUN_DIR/$1.pid" "$RUN_DIR/$1"-*.pid; do
    [[ -e $file ]] || continue
    inst=$(basename "$file" .pid)
    if [[ $inst == "$1" ]]; then
      index=0
    elif [[ ${inst#"$1"-} =~ ^[0-9]+$ ]]; then
      index=$((10#${inst#"$1"-}))
    else
      continue
    fi
    if ((index >= $2)); then echo "$inst"; fi
  done
}

# The port to wait for: the variable the line's port= option names, else <NAME>_GRPC_PORT,
# from the environment overrides services.txt.
effective_port() {
  local name=$1 port=$2 port_var
  port_var=$(service_field "$name" 7)
  if [[ -z $port_var || $port_var == - ]]; then
    port_var=$(tr '[:lower:]-' '[:upper:]_' <<<"$name")_GRPC_PORT
  fi
  if [[ $port != - && -n ${!port_var:-} ]]; then
    port=${!port_var}
  fi
  echo "$port"
}

module_exists() {
  local path=$REPO_ROOT/${1//.//}
  [[ -f $path.py || -f $path/__main__.py ]]
}

# Starts one instance: name, port (or -), module, metrics variable (or -), metrics port
# (or -). It waits for the service's port, or else for its metrics port when that is on.
start_service() {
  local name=$1 module=$3 metrics_var=$4 metrics=$5 port wait_port pid log i from
  local -a env_args=(PYTHONUNBUFFERED=1)
  port=$(effective_port "$name" "$2")
  log=$LOG_DIR/$name.log
  if pid=$(running_pid "$name"); then
    say "$name: already running (pid $pid)"
    return 0
  fi
  if ! module_exists "$module"; then
    say "$name: skipped, module $module does not exist yet"
    return 0
  fi
  wait_port=$port
  if [[ $metrics_var != - ]]; then
    env_args+=("$metrics_var=$metrics")
    [[ $wait_port == - && $metrics != 0 ]] && wait_port=$metrics
  fi
  if [[ $wait_port != - ]] && port_open 127.0.0.1 "$wait_port"; then
    die "$name: port $wait_port is already in use by a process this script did not start"
  fi
  if [[ $port != - ]]; then
    say "$name: starting python -m $module (port $port)"
  elif [[ $wait_port != - ]]; then
    say "$name: starting python -m $module (metrics port $wait_port)"
  else
    say "$name: starting python -m $module"
  fi
  from=$(file_size "$log")
  spawn "$name" "$log" env "${env_args[@]}" "$PYTHON" -m "$module"
  [[ $wait_port == - ]] && return 0
  for ((i = 0; i < SERVICE_START_TIMEOUT * 5; i++)); do
    if port_open 127.0.0.1 "$wait_port"; then
      say "$name: up (pid $(<"$(pid_file "$name")"), port $wait_port)"
      return 0
    fi
    if ! running_pid "$name" >/dev/null; then
      show_new_log "$log" "$from"
      die "$name: exited during startup (log: $log)"
    fi
    sleep 0.2
  done
  show_new_log "$log" "$from"
  stop_component "$name" >/dev/null
  die "$name: did not accept connections on port $wait_port within ${SERVICE_START_TIMEOUT}s"
}

# The services' gRPC ports (5005x) lie inside Linux's ephemeral port range: a client that
# keeps reconnecting to a stopped local server can connect to itself from that very port
# (TCP self-connect) and hold it, and the server then cannot bind it. Reserved ports are
# never picked as a client's source port. Needs root; otherwise it says so and goes on.
reserve_service_ports() {
  local knob=/proc/sys/net/ipv4/ip_local_reserved_ports name port current wanted=()
  while read -r name port _; do
    [[ $port != - ]] && wanted+=("$(effective_port "$name" "$port")")
  done < <(service_lines)
  ((${#wanted[@]})) || return 0
  current=$(cat "$knob" 2>/dev/null) || return 0
  local missing=() item reserved
  for port in "${wanted[@]}"; do
    reserved=no
    for item in ${current//,/ }; do
      if ((port >= ${item%-*} && port <= ${item#*-})); then reserved=yes; fi
    done
    [[ $reserved == yes ]] || missing+=("$port")
  done
  ((${#missing[@]})) || return 0
  local joined
  joined=$(IFS=,; echo "${missing[*]}")
  if [[ -w $knob ]] && echo "${current:+$current,}$joined" >"$knob" 2>/dev/null; then
    say "reserved ports $joined (never used as client source ports)"
  else
    warn "cannot reserve ports $joined in $knob (not root): a service may rarely fail to bind its port after a restart"
  fi
}

cmd_services_up() {
  [[ -x $PYTHON ]] || die "no Python at $PYTHON (create the venv first: uv sync --frozen)"
  cmd_is_up || warn "Kafka and/or Redis are not running (start them with: $0 infra-up)"
  check_service_settings
  reserve_service_ports
  local name port module rvar mvar mport inst
  # Fewer replicas than are running: stop the ones with the highest indices.
  while read -r name port module rvar _; do
    [[ $rvar == - ]] && continue
    while read -r inst; do
      stop_component "$inst"
    done < <(surplus_instances "$name" "$(replica_count "$rvar")")
  done < <(service_lines)
  while read -r name port module mvar mport; do
    start_service "$name" "$port" "$module" "$mvar" "$mport"
  done < <(service_instances)
}

cmd_services_down() {
  check_service_settings
  local names=() name file
  while read -r name _; do names+=("$name"); done < <(service_instances)
  # Also instances beyond the configured count, and services removed from services.txt
  # since they were started.
  for file in "$RUN_DIR"/*.pid; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .pid)
    is_infra "$name" && continue
    [[ " ${names[*]} " == *" $name "* ]] || names+=("$name")
  done
  local i
  for ((i = ${#names[@]} - 1; i >= 0; i--)); do
    stop_component "${names[i]}"
  done
}

# --- commands ---------------------------------------------------------------------------------

cmd_infra_up() {
  [[ -x $PYTHON ]] || die "no Python at $PYTHON (create the venv first: uv sync --frozen)"
  cmd_install
  start_redis
  start_kafka
  ensure_topics
  start_alertmanager
}

cmd_up() {
  cmd_infra_up
  cmd_services_up
  say "stack is up (logs in $LOG_DIR)"
}

cmd_down() {
  cmd_services_down
  stop_component alertmanager
  stop_component kafka
  stop_component redis
}

cmd_status() {
  check_service_settings
  local name port module metrics_var metrics pid endpoint file
  local -a shown=()
  row() { printf '%-18s %-8s %-8s %s\n' "$@"; }
  row COMPONENT STATE PID ENDPOINT
  if pid=$(running_pid redis); then
    row redis running "$pid" "127.0.0.1:$REDIS_PORT"
  else
    row redis stopped - "127.0.0.1:$REDIS_PORT"
  fi
  if pid=$(running_pid kafka); then
    row kafka running "$pid" "$KAFKA_HOST:$KAFKA_PORT"
  else
    row kafka stopped - "$KAFKA_HOST:$KAFKA_PORT"
  fi
  if pid=$(running_pid alertmanager); then
    row alertmanager running "$pid" "$ALERTMANAGER_HOST:$ALERTMANAGER_PORT"
  else
    row alertmanager stopped - "$ALERTMANAGER_HOST:$ALERTMANAGER_PORT"
  fi
  while read -r name port module metrics_var metrics; do
    shown+=("$name")
    endpoint=$(effective_port "$name" "$port")
    [[ $endpoint == - && $metrics != - && $metrics != 0 ]] && endpoint="metrics $metrics"
    if pid=$(running_pid "$name"); then
      row "$name" running "$pid" "$endpoint"
    elif module_exists "$module"; then
      row "$name" stopped - "$endpoint"
    else
      row "$name" absent - "($module not written yet)"
    fi
  done < <(service_instances)
  # Instances beyond the configured count (until the next `up` or `down` stops them).
  for file in "$RUN_DIR"/*.pid; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .pid)
    is_infra "$name" && continue
    [[ " ${shown[*]} " == *" $name "* ]] && continue
    if pid=$(running_pid "$name"); then row "$name" running "$pid" "(not configured)"; fi
  done
  echo "logs: $LOG_DIR"
}

# kafka-down / redis-down / alertmanager-down [--kill]
cmd_stop_one() {
  local name=$1
  shift
  case ${1:-} in
    '') stop_component "$name" ;;
    --kill) stop_component "$name" KILL ;;
    *) die "$name-down takes only --kill" ;;
  esac
}

cmd_is_up() {
  running_pid kafka >/dev/null && running_pid redis >/dev/null
}

usage() {
  sed -n '7,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# One command at a time on one var dir: two `up`s at once would each start a service and
# keep only one pid file. Read-only commands do not wait.
case ${1:-} in
  status | is-up | -h | --help | help | '') ;;
  *)
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/stack.lock"
    flock 9
    ;;
esac

case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  infra-up) cmd_infra_up ;;
  services-up) cmd_services_up ;;
  services-down) cmd_services_down ;;
  is-up) cmd_is_up ;;
  kafka-up) install_kafka && start_kafka ;;
  kafka-down) cmd_stop_one kafka "${@:2}" ;;
  redis-up) install_redis && start_redis ;;
  redis-down) cmd_stop_one redis "${@:2}" ;;
  alertmanager-up) install_alertmanager && start_alertmanager ;;
  alertmanager-down) cmd_stop_one alertmanager "${@:2}" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
