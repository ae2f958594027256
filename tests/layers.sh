#!/usr/bin/env bash
# The coordinator's layers (docs/architecture.md): an include may only reach down, never up or
# sideways into a peer. Each layer lists what its files may include besides common/, the
# generated protobuf headers and system headers:
#   rpc/      front core cluster store kms config
#   front/    core cluster store kms config   (the router serves what main binds; never rpc/)
#   core/     cluster store kms config
#   cluster/  store config
#   store/    config
#   kms/      config
#   config/   (nothing else)
# keyfleetd's main and its helpers (coordinator/*.c) may include anything. common/ includes no
# coordinator header. Coordinator headers are named by folder ("core/app.h"); a bare name that is
# a coordinator header would hide the layer, so it fails too.
#   tests/layers.sh [SOURCE_DIR]     exit 1 and one line per offending include
set -euo pipefail
root=${1:-${KF_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
coord=$root/coordinator

allowed() {
    case $1 in
    rpc) echo "rpc front core cluster store kms config" ;;
    front) echo "front core cluster store kms config" ;;
    core) echo "core cluster store kms config" ;;
    cluster) echo "cluster store config" ;;
    store) echo "store config" ;;
    kms) echo "kms config" ;;
    config) echo "config" ;;
    main) echo "main rpc front core cluster store kms config" ;;
    *) echo "" ;;
    esac
}

# The layer an include names: "core/app.h" -> core; a bare name of a coordinator/*.h -> main.
target_layer() {
    local inc=$1
    case $inc in
    */*)
        local dir=${inc%%/*}
        [ -d "$coord/$dir" ] && echo "$dir"
        ;;
    *)
        if [ -e "$coord/$inc" ]; then
            echo main
        elif compgen -G "$coord/*/$inc" >/dev/null; then
            echo bare
        fi
        ;;
    esac
    return 0
}

bad=0
check_file() {
    local file=$1 layer=$2 rel=${1#"$root"/}
    local n=0 line inc to
    while IFS= read -r line; do
        n=$((n + 1))
        [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\"([^\"]+)\" ]] || continue
        inc=${BASH_REMATCH[1]}
        to=$(target_layer "$inc")
        [ -n "$to" ] || continue
        if [ "$to" = bare ]; then
            echo "$rel:$n: #include \"$inc\": name coordinator headers by folder (\"LAYER/$inc\")"
            bad=1
        elif [[ " $(allowed "$layer") " != *" $to "* ]]; then
            echo "$rel:$n: #include \"$inc\": $layer/ may not include $to/ (layers reach only down)"
            bad=1
        fi
    done <"$file"
}

shopt -s nullglob
count=0
for f in "$coord"/*.[ch]; do
    check_file "$f" main
    count=$((count + 1))
done
for dir in "$coord"/*/; do
    layer=$(basename "$dir")
    if [ -z "$(allowed "$layer")" ]; then
        echo "coordinator/$layer/: not a known layer (add it to tests/layers.sh and docs/architecture.md)"
        bad=1
        continue
    fi
    for f in "$dir"*.[ch]; do
        check_file "$f" "$layer"
        count=$((count + 1))
    done
done
for f in "$root"/common/*.[ch]; do
    check_file "$f" common
    count=$((count + 1))
done
if [ "$bad" != 0 ]; then
    echo "layers: FAILED"
    exit 1
fi
echo "layers: ok ($count files)"
