#!/usr/bin/env bash
# Review rev17d, D5(b): a commit PRAGMA data_version cannot see. sqlite3 opened on the running
# leader's database with the `unix-none` VFS and `locking_mode=EXCLUSIVE` keeps its wal-index in its
# own heap: it undoes n1's revocation, checkpoints into the main file at close and deletes the
# -wal file the running keyfleetd still writes to. keyfleetd's shared wal-index and page cache
# never show it the edit (no dispute, no key for n1), but the main file now holds it. Expected:
# no key for n1 while it runs; after a restart of that replica (which reads the edited main file
# and replays its Raft log), it does not serve n1 either: its state differs from the majority's,
# so it is disputed and outvoted (or its store refuses the file), and the honest two do not
# diverge.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n1
. "$(dirname "$0")/cluster_lib.sh"

revoked_n1_cluster
for n in c1 c2 c3; do signed_on "$n"; done
E=$L
sqlite3 "file:$WORK/$E/state/keyfleet.db?vfs=unix-none" "PRAGMA locking_mode=EXCLUSIVE; UPDATE nodes SET revoked = 0 WHERE name = 'n1'"
check "the writer deleted the running replica's -wal file" test ! -e "$WORK/$E/state/keyfleet.db-wal"
got=""
for _ in $(seq 1 10); do
    out=$(release n1 vol-1 "$WRAP" "${RPC[$E]}" 2>&1)
    [ "${out#code=ok}" != "$out" ] && got=$out
    sleep 0.1
done
check "the revoked n1 gets no key from the running written replica (${got:-none})" test -z "$got"
echo "# disputes on $E while it ran: $(grep -c "event=audit_disputed" "$WORK/$E/keyfleetd.log")"
for n in c1 c2 c3; do signed_on "$n" >/dev/null 2>&1; done
# A crash (SIGKILL): the frames keyfleetd wrote since go with the unlinked -wal file, and its
# own checkpoint at a clean stop (which writes its wal-index's pages back over the edit) never runs.
kill -KILL "${PID[$E]}"
wait "${PID[$E]}" 2>/dev/null
echo "# $E's main file after the crash: n1 revoked=$(sqlite3 -readonly "$WORK/$E/state/keyfleet.db" "SELECT revoked FROM nodes WHERE name = 'n1'" 2>&1)"
start "$E"
got=""
for _ in $(seq 1 30); do
    out=$(release n1 vol-1 "$WRAP" "$S3" 2>&1)
    [ "${out#code=ok}" != "$out" ] && got=$out
    sleep 0.2
done
check "after its restart the revoked n1 gets no key from anyone (${got:-none})" test -z "$got"
echo "# $E after restart: $(readyz "$E" | head -c 200); disputes $(grep -c "event=audit_disputed" "$WORK/$E/keyfleetd.log"), diverged $(grep -c "event=audit_diverged" "$WORK/$E/keyfleetd.log")"
for n in c1 c2 c3; do
    [ "$n" = "$E" ] && continue
    check "the honest $n does not diverge" test "$(grep -c "event=audit_diverged" "$WORK/$n/keyfleetd.log")" -eq 0
done
stop_replicas c1 c2 c3 2>/dev/null
check_sanitizers
finish
