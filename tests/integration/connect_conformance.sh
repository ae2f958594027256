#!/usr/bin/env bash
# Connect conformance (issue #25) with the official Connect client for Node
# (@connectrpc/connect-node from the npm registry, tests/connect/; scripts/install-deps runs
# `npm ci` there), against keyfleetd on loopback with the Vault stand-in as its KMS (so a KMS
# call can be made slow): one success, each error class, request compression, and deadlines,
# both the client's own (timeoutMs) and keyfleetd's (connect-timeout-ms) answer. The audit log
# then shows that nothing was enrolled for a client whose deadline had passed.
. "$(dirname "$0")/lib.sh"

CONNECT=$(cd "$(dirname "$0")/../connect" && pwd)
if ! command -v node >/dev/null || [ ! -d "$CONNECT/node_modules/@connectrpc/connect-node" ]; then
    not_ok "the Connect client is installed" "run: npm ci --prefix tests/connect (scripts/install-deps does)"
    finish
fi
command -v protoc-c >/dev/null || { not_ok "protoc-c is installed" "protobuf-c-compiler"; finish; }
PROTO_DIR=$(cd "$(dirname "$0")/../../proto" && pwd)
protoc-c -I"$PROTO_DIR" --descriptor_set_out="$WORK/keyfleet.desc" --include_imports \
    "$PROTO_DIR"/keyfleet/v1/admin.proto "$PROTO_DIR"/keyfleet/v1/node.proto ||
    { not_ok "protoc-c writes the descriptor set"; finish; }

F=$WORK/fleet
fleet_init "$F"
issue "$F" node conf-1
start_vault_standin "$F" 300
vault_kms_yaml 10s 1 >>"$F/keyfleetd.yaml"
start_kfd "$F"
allow_nodes "$F" "conf-*"

command node "$CONNECT/conformance.mjs" "$WORK/keyfleet.desc" "https://127.0.0.1:$PORT" "$F" "$F/fault" >"$WORK/node.out" 2>&1
rc=$?
while IFS= read -r line; do
    case $line in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" "$(grep -A1 -F -- "$line" "$WORK/node.out" | sed -n '2s/^#   //p')" ;;
    esac
done <"$WORK/node.out"
expect_eq "the Connect client's run ends cleanly" "$rc" "0"
[ "$rc" = 0 ] || sed 's/^/# /' "$WORK/node.out" | tail -n 20
for v in $(sed -n 's/^volume //p' "$WORK/node.out"); do
    n=$(ctl "$F" audit --json --action enroll --decision allow | grep -c "\"volume\":\"$v\"")
    e=$(ctl "$F" audit --json --action enroll --decision error | grep "\"volume\":\"$v\"")
    case $v in
    conf-deadline-client-*) expect_eq "no enrollment recorded for $v (the client gave up)" "$n" "0" ;;
    conf-deadline-server-*)
        expect_eq "only the later enrollment recorded for $v (not the one past its deadline)" "$n" "1"
        expect_match "the key made past the deadline is audited as dropped" "$e" 'deadline.*no key was released'
        r=$(ctl "$F" audit --json --action release --volume "$v")
        expect_match "the key unwrapped past the Release's deadline is audited as dropped" "$r" \
            '"decision":"error".*deadline.*no key was released'
        expect_eq "so is the key unwrapped after the client gave up (two dropped-key records)" \
            "$(printf '%s\n' "$r" | grep -c '"decision":"error".*no key was released')" "2"
        expect_eq "and no release is recorded for it" "$(printf '%s\n' "$r" | grep -c '"decision":"allow"')" "0"
        ;;
    esac
done
m=$(kcurl "$F" operator "$URL/metrics")
expect_match "keyfleetd counts its deadline_exceeded answers" "$m" \
    'keyfleet_rpc_requests_total\{method="keyfleet.v1.NodeService/Enroll",code="deadline_exceeded"\} [1-9]'
stop_kfd TERM
check_sanitizers
finish
