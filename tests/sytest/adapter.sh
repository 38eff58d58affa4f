#!/usr/bin/env bash
# Runs Hearth under sytest with the settings sytest hands a server that the shared adapter
# (../shared/sytest/hearth-adapter.sh, HEARTH_SYTEST_ADAPTER; read-only here) does not map:
#
#   SYTEST_APPSERVICE_CONFIGS  ':'-separated registration YAMLs -> app_service_config_files
#   SYTEST_SMTP_HOST/_PORT     sytest's mail sink (plain SMTP) -> smtp_host, smtp_port,
#                              smtp_tls = "none", through smtp-helo.py (the sink knows
#                              HELO only; Hearth's client greets with EHLO)
#   sytest's identity server   serves the self-signed keys/tls-selfsigned.crt, which no
#                              CA signed and which names no host in a SAN: it becomes a
#                              pinned certificate (pinned_certificates), the setting an
#                              operator uses for a self-signed server of their own
#
# It writes a Hearth config with those keys (then the settings of the `--config FILE` it was
# given, if any) and hands it to that adapter in that file's place. scripts/sytest.sh puts
# it in front with `--hs-binary`.
set -euo pipefail
adapter="${HEARTH_SYTEST_ADAPTER:?set HEARTH_SYTEST_ADAPTER to ../shared/sytest/hearth-adapter.sh}"
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
conf="$SYTEST_HS_DIR/hearth-sytest.toml"
{
    # Top-level keys first: anything after a [table] header would belong to it.
    if [[ -n ${SYTEST_APPSERVICE_CONFIGS:-} ]]; then
        IFS=: read -ra files <<<"$SYTEST_APPSERVICE_CONFIGS"
        printf 'app_service_config_files = ['
        sep=""
        for f in "${files[@]}"; do
            printf '%s"%s"' "$sep" "${f//\"/\\\"}"
            sep=", "
        done
        printf ']\n'
    fi
    if [[ -n ${SYTEST_SMTP_HOST:-} ]]; then
        relay=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        python3 "$(dirname "$0")/smtp-helo.py" "$relay" "$SYTEST_SMTP_HOST" "${SYTEST_SMTP_PORT:-25}" \
            >>"$SYTEST_HS_DIR/smtp-helo.log" 2>&1 &
        printf 'smtp_host = "127.0.0.1"\nsmtp_port = %s\nsmtp_tls = "none"\n' "$relay"
    fi
    selfsigned="$(dirname "${SYTEST_CA_CERT:-/nonexistent}")/tls-selfsigned.crt"
    if [[ -f $selfsigned ]]; then
        printf 'pinned_certificates = ["%s"]\n' "$selfsigned"
    fi
    if [[ -n $base ]]; then cat "$base"; fi
} >"$conf"
exec "$adapter" "${args[@]}" --config "$conf"
