#!/usr/bin/env bash
# The local demo: a real moto server and the project's Bitbucket fake on loopback, then
# bbfleet plan -> apply -> status -> destroy, printing what a user would see.
# Both servers stop when this script exits (and after 30 minutes at most).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
cargo build --quiet --locked -p bbfleet -p bitbucket-fake --bins --example aws_rules_proxy
export PATH="$PWD/.venv/bin:$PWD/target/debug:$PWD/target/debug/examples:$PATH"
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

moto_port=$(free_port)
(cd "$work" && exec timeout 1800 moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1) &
pids+=($!)
bitbucket-fake --port 0 --max-lifetime-secs 1800 --ready-file "$work/fake.url" >"$work/fake.log" 2>&1 &
pids+=($!)
# bbfleet reaches moto through the tests' AWS-rules layer, which answers as AWS does where
# moto does not (README, "What the tests emulate").
aws_rules_proxy --upstream "http://127.0.0.1:$moto_port" --ready-file "$work/aws.url" \
    --max-lifetime-secs 1800 >"$work/aws-rules.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
    if [ -s "$work/fake.url" ] && [ -s "$work/aws.url" ] && curl -fsS "http://127.0.0.1:$moto_port/moto-api/" >/dev/null 2>&1; then break; fi
    sleep 0.2
done
[ -s "$work/fake.url" ] || { echo "the Bitbucket fake did not start" >&2; cat "$work/fake.log" >&2; exit 1; }
[ -s "$work/aws.url" ] || { echo "the AWS-rules proxy did not start" >&2; cat "$work/aws-rules.log" >&2; exit 1; }

export AWS_ENDPOINT_URL
AWS_ENDPOINT_URL=$(cat "$work/aws.url")
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export BITBUCKET_API_URL
BITBUCKET_API_URL=$(cat "$work/fake.url")
# The fake's demo OAuth consumer (client-credentials grant, as with a real workspace consumer).
export BITBUCKET_OAUTH_CLIENT_ID=fake-client-id BITBUCKET_OAUTH_CLIENT_SECRET=fake-client-secret
export BITBUCKET_OAUTH_TOKEN_URL="${BITBUCKET_API_URL%/2.0}/site/oauth2/access_token"

# moto makes new subnet ids on every start: fill them into the demo config.
subnets=$(aws ec2 describe-subnets --filters Name=default-for-az,Values=true \
    --query 'sort_by(Subnets, &AvailabilityZone)[:3].SubnetId' --output text | tr '\t' ' ')
read -r s1 s2 s3 <<<"$subnets"
sed -e "s/SUBNET_A/$s1/; s/SUBNET_B/$s2/; s/SUBNET_C/$s3/" examples/demo.toml >"$work/bbfleet.toml"
export BBFLEET_CONFIG="$work/bbfleet.toml"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
step bbfleet validate
step bbfleet plan
step bbfleet apply --auto-approve
step bbfleet plan
step bbfleet status
step bbfleet destroy --auto-approve
echo
echo "Demo done: moto and the Bitbucket fake stop now."
