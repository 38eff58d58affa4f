#!/usr/bin/env bash
# Runs Hearth under sytest with sytest's application service registrations.
#
# sytest writes one registration YAML per application service for server-0 and names them
# in SYTEST_APPSERVICE_CONFIGS (':'-separated); the shared adapter
# (../shared/sytest/hearth-adapter.sh, HEARTH_SYTEST_ADAPTER) has no mapping for it. This
# wrapper writes a Hearth config with `app_service_config_files` (after the settings of the
# `--config FILE` it was given, if any) and hands it to that adapter in that file's place.
# scripts/sytest.sh puts it in front with `--hs-binary` for the application service run.
set -euo pipefail
adapter="${HEARTH_SYTEST_ADAPTER:?set HEARTH_SYTEST_ADAPTER to ../shared/sytest/hearth-adapter.sh}"
if [[ -z ${SYTEST_APPSERVICE_CONFIGS:-} ]]; then
    exec "$adapter" "$@"
fi
base=""
args=()
while (($#)); do
    if [[ $1 == --config && $# -ge 2 ]]; then
        base="$2"
        shift 2
    else
        args+=("$1")
        shift
    fi
done
conf="$SYTEST_HS_DIR/hearth-appservices.toml"
IFS=: read -ra files <<<"$SYTEST_APPSERVICE_CONFIGS"
{
    # Top-level keys first: anything after a [table] header would belong to it.
    printf 'app_service_config_files = ['
    sep=""
    for f in "${files[@]}"; do
        printf '%s"%s"' "$sep" "${f//\"/\\\"}"
        sep=", "
    done
    printf ']\n'
    if [[ -n $base ]]; then cat "$base"; fi
} >"$conf"
exec "$adapter" "${args[@]}" --config "$conf"
