# kms.sh - sourced by the benchmark scripts (bench-rbd, bench-reencrypt,
# bench-reencrypt-online, bench-snapshot, bench-lazy): a throw-away envol KMS
# on a free loopback port with one user (AWS profile "bench", written with its
# endpoint into private AWS_* files, so nothing of the caller's AWS setup is
# used) and one key, alias/bench.
#
# start_bench_kms NAME: needs ENVOL (the envol binary), WORK (a scratch
# directory) and PIDS (an array the caller kills at exit); sets ENDPOINT. NAME
# (the calling script) starts the error line if the KMS does not come up.
start_bench_kms() {
  local name=$1
  mkdir -p "$WORK/aws"
  export AWS_SHARED_CREDENTIALS_FILE=$WORK/aws/credentials AWS_CONFIG_FILE=$WORK/aws/config
  export AWS_EC2_METADATA_DISABLED=true ENVOL_LOG=warn
  unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KMS
  "$ENVOL" kms init --data "$WORK/kms" >/dev/null
  "$ENVOL" kms serve --data "$WORK/kms" --listen 127.0.0.1:0 >"$WORK/kms.out" 2>"$WORK/kms.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q 'http://' "$WORK/kms.out" 2>/dev/null && break; sleep 0.1; done
  ENDPOINT=$(grep -o 'http://[^ ]*' "$WORK/kms.out" | head -1)
  [[ -n $ENDPOINT ]] || { echo "$name: envol kms serve did not start:" >&2; cat "$WORK/kms.err" >&2; exit 1; }
  # `kms user add --profile` writes the profile (endpoint included) into the AWS_* files.
  "$ENVOL" kms user add bench --data "$WORK/kms" --profile bench --endpoint "$ENDPOINT" >/dev/null
  "$ENVOL" key create --alias bench --profile bench >/dev/null
}
