# Shared helpers for the integration tests: a scratch fleet made with keyfleetctl, the real
# keyfleetd on 127.0.0.1 (port 0, read back from its port file), curl with fleet credentials,
# and TAP-like reporting that ends with "N passed, N failed". Every wait is bounded.
set -u

BUILD=${KF_BUILD_DIR:?set KF_BUILD_DIR to the build directory}
KFD=$BUILD/coordinator/keyfleetd
CTL=$BUILD/ctl/keyfleetctl
PROBE=$BUILD/tests/rpc_probe
WORK=$(mktemp -d /tmp/kf-it.XXXXXX)
# Debian's python3 (scripts/install-deps installs it with python3-cryptography) before any
# version manager's shim on PATH: a pyenv shim costs about half a second of CPU a call, and the
# ZFS stand-in is one call per `zfs` command.
if [ -x /usr/bin/python3 ] && [ "$(command -v python3)" != /usr/bin/python3 ]; then
    mkdir -p "$WORK/bin" && ln -s /usr/bin/python3 "$WORK/bin/python3" && PATH=$WORK/bin:$PATH
fi
PASSED=0
FAILED=0
FAILURES=""
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    if [ "$FAILED" -gt 0 ] || [ -n "${KF_KEEP:-}" ]; then
        for f in "$WORK"/*/keyfleetd.log; do [ -f "$f" ] && { echo "# --- $f"; tail -n 30 "$f" | sed 's/^/# /'; }; done
        # A helper's stderr kept apart from its answer (the TPM probe's, for one).
        for f in "$WORK"/*.err; do [ -s "$f" ] && { echo "# --- $f"; tail -n 15 "$f" | sed 's/^/# /'; }; done
        # Again after the logs, so that a tail of the output names what failed.
        [ -n "$FAILURES" ] && printf '# failed:\n%s' "$FAILURES"
    fi
    [ -n "${KF_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

ok() { PASSED=$((PASSED + 1)); echo "ok - $1"; }
not_ok() {
    FAILED=$((FAILED + 1))
    echo "not ok - $1"
    [ $# -gt 1 ] && echo "#   $2"
    FAILURES="$FAILURES#   not ok - $1${2:+ ($2)}"$'\n'
    return 0
}
# check DESC CMD...: passes when CMD succeeds.
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d" "command failed: $*"; fi; }
# expect_eq DESC ACTUAL EXPECTED
expect_eq() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "got '$2', want '$3'"; fi; }
# expect_match DESC TEXT REGEX
# (TEXT is matched as one line: newlines become spaces.)
expect_match() { if printf '%s' "$2" | tr '\n' ' ' | grep -Eq -- "$3"; then ok "$1"; else not_ok "$1" "'$2' does not match /$3/"; fi; }

finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit $?
}

# fleet_init DIR: a fleet CA, coordinator and operator certificates, configs on port 0.
fleet_init() {
    "$CTL" init "$1" --listen 127.0.0.1:0 >/dev/null || { not_ok "keyfleetctl init $1"; finish; }
}

# issue DIR KIND NAME [ARGS...]: a certificate signed by DIR's CA, written as DIR/NAME.{crt,key}.
issue() {
    local dir=$1 kind=$2 name=$3
    shift 3
    "$CTL" cert issue "$kind" "$name" --dir "$dir" "$@" >/dev/null
}

# start_kfd DIR: starts keyfleetd and waits (at most 10 s) for its port; sets PORT, URL and KFD_PID.
# db_has_audit DB WHERE: keyfleetd commits what it applied to its database in batches
# (cluster/replication.c: 50 ms after the first entry, at its next loop turn), so a test that
# reads the database from outside first waits, at most 5 s, for the audit record of its last
# step (`SELECT count(*) FROM audit WHERE` WHERE): what was applied before it is committed with
# it or earlier, so what is read after it is final. 1 when no such record came.
db_has_audit() {
    for _ in $(seq 1 50); do
        [ "$(sqlite3 -cmd ".timeout 5000" "$1" "SELECT count(*) FROM audit WHERE $2" 2>/dev/null)" -gt 0 ] 2>/dev/null &&
            return 0
        sleep 0.1
    done
    return 1
}

# db_value_when DB SQL WANT: SQL's value in DB, read from outside, once it is WANT (at most 5 s;
# then the last value read): keyfleetd commits in batches, so what an answer reported can reach
# the file up to 50 ms later. For values the test expects to appear, never for ones it expects
# to stay absent (read those after db_has_audit, or once keyfleetd has stopped).
db_value_when() {
    local v=""
    for _ in $(seq 1 50); do
        v=$(sqlite3 -cmd ".timeout 5000" "$1" "$2" 2>/dev/null)
        [ "$v" = "$3" ] && break
        sleep 0.1
    done
    printf '%s' "$v"
}

# wait_head_confirmed DIR N0: a leader writes nothing until it has confirmed its audit head
# (core/checkpoint.c): waits for that in DIR/keyfleetd.log past line N0, at most 3 s (one that
# cannot goes on, and the test sees why; one whose log diverged at start never will).
wait_head_confirmed() {
    for _ in $(seq 1 60); do
        tail -n +"$(($2 + 1))" "$1/keyfleetd.log" | grep -q -e "event=audit_head_confirmed" \
            -e "event=audit_diverged" && return 0
        kill -0 "$KFD_PID" 2>/dev/null || return 0
        sleep 0.05
    done
}

start_kfd() {
    local dir=$1 n0
    n0=$(wc -l <"$dir/keyfleetd.log" 2>/dev/null || echo 0)
    rm -f "$dir/keyfleetd.port"
    "$KFD" -c "$dir/keyfleetd.yaml" >>"$dir/keyfleetd.log" 2>&1 &
    KFD_PID=$!
    PIDS+=("$KFD_PID")
    for _ in $(seq 1 200); do
        if [ -s "$dir/keyfleetd.port" ]; then
            PORT=$(head -n 1 "$dir/keyfleetd.port")
            URL=https://127.0.0.1:$PORT
            wait_head_confirmed "$dir" "$n0"
            return 0
        fi
        kill -0 "$KFD_PID" 2>/dev/null || break
        sleep 0.05
    done
    not_ok "keyfleetd started" "no port file; see $dir/keyfleetd.log"
    finish
}

# pin_port DIR: writes the port keyfleetd got into its config, so a restart keeps it (for a
# client whose config names the port, such as an agent in a VM).
pin_port() { sed -i "s/127.0.0.1:0\"/127.0.0.1:$PORT\"/" "$1/keyfleetd.yaml"; }

# stop_kfd [SIGNAL]: signals keyfleetd and waits at most 15 s; sets KFD_EXIT.
stop_kfd() {
    local sig=${1:-TERM}
    kill -s "$sig" "$KFD_PID" 2>/dev/null
    for _ in $(seq 1 300); do
        kill -0 "$KFD_PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$KFD_PID" 2>/dev/null; then
        kill -9 "$KFD_PID"
        KFD_EXIT=timeout
    else
        wait "$KFD_PID"
        KFD_EXIT=$?
    fi
}

# kcurl DIR CERTNAME ARGS...: curl over HTTP/2 with DIR's CA and DIR/CERTNAME.{crt,key}.
kcurl() {
    local dir=$1 who=$2
    shift 2
    curl -sS --max-time 5 --http2 --cacert "$dir/ca.crt" --cert "$dir/$who.crt" --key "$dir/$who.key" "$@"
}

# rpc DIR CERTNAME METHOD [CURL ARGS...]: POSTs an RPC; prints "HTTP_CODE BODY".
rpc() {
    local dir=$1 who=$2 method=$3
    shift 3
    kcurl "$dir" "$who" -o "$WORK/body" -w '%{http_code}' -X POST "$@" \
        "https://127.0.0.1:$PORT/keyfleet.v1.$method" >"$WORK/code" 2>/dev/null
    printf '%s %s' "$(cat "$WORK/code")" "$(cat "$WORK/body" 2>/dev/null)"
}

metric() { kcurl "$1" operator "https://127.0.0.1:$PORT/metrics" | grep -E "^$2 " | awk '{print $2}'; }

# No sanitizer report in any log.
check_sanitizers() {
    if grep -l -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$WORK"/*/keyfleetd.log >/dev/null 2>&1; then
        not_ok "no sanitizer reports" "$(grep -h -E 'Sanitizer|runtime error' "$WORK"/*/keyfleetd.log | head -3)"
    else
        ok "no sanitizer reports"
    fi
}

NODE_CLIENT=$BUILD/tests/node_client

# audit_signed DIR: waits (at most 5 s) until the newest audit record is a signed checkpoint
# (docs/audit.md), so that no checkpoint commit comes later: before counting records, or before
# writing to the database beside keyfleetd (which does not wait for a lock: it fails closed).
audit_signed() { wait_signed ctl "$1"; }
# wait_signed CTL_FN ARG: the same, asking through CTL_FN ARG (ctl DIR, or ctlx NAME in clusters).
wait_signed() {
    for _ in $(seq 1 50); do
        "$1" "$2" audit --json 2>/dev/null | tail -n 1 | grep -q '"action":"checkpoint"' && return 0
        sleep 0.1
    done
    return 1
}

# ctl DIR ARGS...: keyfleetctl as DIR's operator against the running keyfleetd.
ctl() { local dir=$1; shift; "$CTL" -c "$dir/keyfleetctl.yaml" --server "127.0.0.1:$PORT" "$@"; }
# ctl_as DIR OPERATOR ARGS...: keyfleetctl with another operator certificate from DIR.
ctl_as() {
    local dir=$1 who=$2
    shift 2
    "$CTL" -c "$dir/keyfleetctl.yaml" --server "127.0.0.1:$PORT" --cert "$dir/$who.crt" --key "$dir/$who.key" "$@"
}
# node DIR NAME ARGS...: node_client with DIR/NAME.{crt,key}; prints its one line.
node() {
    local dir=$1 who=$2
    shift 2
    "$NODE_CLIENT" "127.0.0.1:$PORT" "$dir/$who.crt" "$dir/$who.key" "$dir/ca.crt" "$@"
}
# field KEY LINE: the value of KEY=VALUE in a node_client line.
field() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
# put_policy DIR: the policy on stdin becomes the coordinator's policy.
# approle_login ROLE_ID SECRET [curl args] -> "HTTP_CODE BODY": a Login to $URL, as a node
# would make it, trusting $F's CA. LoginRequest: 1=role_id (36 bytes), 2=secret_id.
approle_login() {
    local rid=$1 sec=$2
    shift 2
    printf '\x0a\x24%s\x12%b%s' "$rid" "$(printf '\\x%02x' "${#sec}")" "$sec" >"$WORK/login.pb"
    curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" -H 'content-type: application/proto' \
        --data-binary "@$WORK/login.pb" -o "$WORK/login.out" -w '%{http_code}' "$@" "$URL/keyfleet.v1.NodeService/Login"
    printf ' %s' "$(tr -d '\0' <"$WORK/login.out" | head -c 200)"
}
# put_policy DIR: stores the policy on stdin. Right after start a single coordinator may not lead
# yet (unavailable: no leader); on a loaded machine that lasts a while, so that is retried, for
# at most 10 s. Any other refusal is returned at once.
put_policy() {
    cat >"$1/policy.yaml" || return 1
    local out
    for _ in $(seq 1 100); do
        out=$(ctl "$1" policy put "$1/policy.yaml" 2>&1) && return 0
        case $out in *unavailable*) sleep 0.1 ;; *) break ;; esac
    done
    printf '%s\n' "$out" >&2
    return 1
}

AGENT=$BUILD/agent/keyfleet-agent
ZFS_STANDIN=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/zfs-standin
export KF_ZFS_STANDIN_STATE=$WORK/zfs-state.json

# luks_file PATH PASSPHRASE: a LUKS2 container in a file (cheap PBKDF for tests).
luks_file() {
    truncate -s 20M "$1"
    printf '%s' "$2" | cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --key-file=- "$1"
}

# agent_config FILE NODE [EXTRA YAML LINES...]: an agent config for DIR/NODE.{crt,key}.
agent_config() {
    local file=$1 node=$2
    shift 2
    {
        echo "coordinators: [\"127.0.0.1:$PORT\"]"
        echo "identity: {cert: $F/$node.crt, key: $F/$node.key, ca: $F/ca.crt}"
        echo "state_file: $WORK/$node-state.json"
        echo "luks: {activate: false}"
        echo "zfs: {command: $ZFS_STANDIN}"
        for line in "$@"; do echo "$line"; done
    } >"$file"
}
# recovery_text HEX: the recovery key text (docs/recovery.md) of a 32-byte key, by an
# implementation independent of common/kf_recovery.c.
recovery_text() {
    python3 - "$1" <<'PY'
import hashlib, sys
A = "0123456789abcdefghjkmnpqrstvwxyz"
key = bytes.fromhex(sys.argv[1])
n = int.from_bytes(key, "big") << 4 | hashlib.sha256(b"keyfleet recovery v1" + key).digest()[0] >> 4
v = [(n >> (255 - 5 * i)) & 31 for i in range(52)]
print("-".join("".join(A[x] for x in v[4 * g:4 * g + 4]) +
               A[(v[4 * g] + 3 * v[4 * g + 1] + 5 * v[4 * g + 2] + 7 * v[4 * g + 3] + 7 * g) % 32] for g in range(13)))
PY
}
# luks_json FILE: the LUKS2 header metadata as one compact JSON line.
luks_json() {
    cryptsetup luksDump --dump-json-metadata "$1" |
        python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), separators=(",", ":")))'
}

# test_port: a random TCP port that nothing on 127.0.0.1 listens on now, below Linux's ephemeral
# range (32768 and up), where other tests' client connections take their ports from.
test_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((10000 + RANDOM % 22000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || break
    done
    echo "$p"
}

# start_swtpm DIR: a software TPM on loopback; sets TCTI. A port taken between the choice and
# swtpm's bind (swtpm then exits without a pid file) is chosen again, up to 5 times.
start_swtpm() {
    mkdir -p "$1"
    local port try
    for try in 1 2 3 4 5; do
        port=$(test_port)
        rm -f "$1/pid"
        swtpm socket --tpmstate dir="$1" --tpm2 --server type=tcp,port=$port,bindaddr=127.0.0.1 \
            --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
            --pid file="$1/pid" --daemon 2>>"$1/swtpm.err" || continue
        for _ in $(seq 1 100); do [ -s "$1/pid" ] && break; sleep 0.05; done
        [ -s "$1/pid" ] && break
    done
    PIDS+=("$(cat "$1/pid")")
    TCTI="swtpm:host=127.0.0.1,port=$port"
    export TSS2_LOG=all+none
}

# allow_nodes DIR GLOB...: a policy with one rule allowing the named nodes (globs).
allow_nodes() {
    local dir=$1 names=""
    shift
    for g in "$@"; do names="$names${names:+, }\"$g\""; done
    put_policy "$dir" <<YAML
rules:
  - name: all
    match: {nodes: {names: [$names]}}
    effect: allow
YAML
}

# node_rule DIR RULE REQUIRE NAME...: one rule RULE allowing nodes NAME..., with require: [REQUIRE]
# (none when REQUIRE is empty).
node_rule() {
    local dir=$1 rule=$2 req=$3 names="" g
    shift 3
    for g in "$@"; do names="$names${names:+, }\"$g\""; done
    put_policy "$dir" <<YAML
rules:
  - name: $rule
    match: {nodes: {names: [$names]}}
    effect: allow
${req:+    require: [$req]}
YAML
}

KMS_STANDIN_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/kms-standin

# kms_tls DIR: a self-signed certificate for 127.0.0.1 (DIR/kms.crt, DIR/kms.key) for a stand-in.
kms_tls() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=kms-standin \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$1/kms.key" -out "$1/kms.crt" 2>/dev/null
}

# start_standin DIR NAME ARGS...: starts tests/kms-standin/NAME.py with DIR's certificate and
# fault file (DIR/fault); waits (at most 10 s) for its port; sets SPORT.
start_standin() {
    local dir=$1 name=$2
    shift 2
    rm -f "$dir/$name.port"
    : >"$dir/fault"
    python3 "$KMS_STANDIN_DIR/$name.py" --cert "$dir/kms.crt" --tls-key "$dir/kms.key" --port-file "$dir/$name.port" \
        --fault-file "$dir/fault" "$@" 2>>"$dir/$name.log" &
    PIDS+=("$!")
    STANDIN_PID=$!
    for _ in $(seq 1 200); do
        [ -s "$dir/$name.port" ] && { SPORT=$(cat "$dir/$name.port"); return 0; }
        sleep 0.05
    done
    not_ok "$name did not start"
    finish
}
# start_vault_standin DIR TOKEN_TTL: the Vault stand-in with AppRole credentials for keyfleetd
# (DIR/role.id, DIR/secret.id), a root token (DIR/root.token) and the transit key "keyfleet".
start_vault_standin() {
    kms_tls "$1"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$1/root.token"
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$1/secret.id"
    printf 'role-keyfleetd\n' >"$1/role.id"
    start_standin "$1" vault_standin --root-token-file "$1/root.token" --role-id role-keyfleetd \
        --secret-id-file "$1/secret.id" --token-ttl "$2" --key keyfleet
}
# vault_kms_yaml TIMEOUT ATTEMPTS [KEY]: keyfleetd's kms section for the Vault stand-in (for
# keyfleetd.yaml; DIR's role.id, secret.id and kms.crt from start_vault_standin).
vault_kms_yaml() {
    cat <<YAML
kms:
  backend: vault-transit
  timeout: $1
  attempts: $2
  vault:
    address: https://127.0.0.1:$SPORT
    ca: kms.crt
    key: ${3:-keyfleet}
    role_id_file: role.id
    secret_id_file: secret.id
YAML
}
# fault DIR LINE: the next requests to DIR's stand-in get this fault ("" clears it).
# azure_kms_yaml KEY LINES: keyfleetd's kms section for the Azure stand-in at $SPORT (for
# keyfleetd.yaml; DIR's kms.crt from kms_tls): timeout 3s (the stand-in makes RSA keys in Python,
# which took more than 1 s on a loaded CI machine), 2 attempts; LINES are the identity's
# options (tenant, client_id, ..., scope), indented four spaces.
azure_kms_yaml() {
    cat <<YAML
limits:
  shutdown_grace: 5s
kms:
  backend: azure-keyvault
  timeout: 3s
  attempts: 2
  azure:
    vault_url: https://127.0.0.1:$SPORT
    ca: kms.crt
    key: $1
$2
YAML
}
fault() { printf '%s\n' "$2" >"$1/fault"; }

# tpm_manufacture DIR: a TPM 2.0 state in DIR as a TPM maker ships it: swtpm_setup with an EK
# certificate signed by a test-local manufacturer CA ($WORK/ekca; its certificates, for
# keyfleetctl cert issue --ek-ca, in $WORK/ek-cas.pem).
tpm_manufacture() {
    mkdir -p "$1" "$WORK/ekca"
    printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
        "$WORK/ekca" "$WORK/ekca" "$WORK/ekca" "$WORK/ekca" >"$WORK/localca.conf"
    : >"$WORK/localca.options"
    printf 'create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\n' \
        "$WORK/localca.conf" "$WORK/localca.options" >"$WORK/swtpm_setup.conf"
    swtpm_setup --tpm2 --tpmstate "$1" --create-ek-cert --config "$WORK/swtpm_setup.conf" >"$1.setup.log" 2>&1 ||
        { not_ok "swtpm_setup $1" "$(tail -n 3 "$1.setup.log")"; finish; }
    cat "$WORK/ekca/issuercert.pem" "$WORK/ekca/swtpm-localca-rootca-cert.pem" >"$WORK/ek-cas.pem"
}

# start_optional_auth_fleet DIR: a fleet whose keyfleetd takes TLS clients without a certificate
# (tls.client_auth: optional: AppRole bearers, HTTP/1.1 without a certificate), started (PORT set).
start_optional_auth_fleet() {
    fleet_init "$1"
    sed -i 's/client_auth: required/client_auth: optional/' "$1/keyfleetd.yaml"
    start_kfd "$1"
}
