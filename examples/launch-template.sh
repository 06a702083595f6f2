#!/bin/sh
# One user-data for a whole fleet: render it from a grant, put it in an EC2 launch template
# (base64, as EC2 wants it) that requires IMDSv2 with a hop limit of 1, and start an autoscaling
# group from the template. Run where postbox-issuer and the AWS CLI are installed, with the
# operator's credentials (they never reach the template or the instances).
# Usage: launch-template.sh NAME AMI-ID SUBNET-IDS GRANT-FILE [USER-DATA-OPTION...]
#   GRANT-FILE: from `postbox-issuer renew ... -o grant.json` (a grant that renews itself).
#   USER-DATA-OPTION: more options for `postbox-issuer user-data`, e.g.
#     --wheelhouse wheelhouse.tar   (every instance installs the same pinned wheels, no index)
# AWS_ENDPOINT_URL, if set, sends every AWS CLI call elsewhere (the tests use moto's server).
set -eu
name="$1"
ami="$2"
subnets="$3"
grant="$4"
shift 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# gzip: EC2 accepts 16384 bytes of user-data, and cloud-init reads it compressed.
postbox-issuer user-data --grant "$grant" "$@" --gzip -o "$work/user-data.gz"
python3 - "$work/user-data.gz" "$ami" > "$work/template.json" <<'PY'
import base64, json, sys
user_data, ami = sys.argv[1], sys.argv[2]
with open(user_data, "rb") as f:
    encoded = base64.b64encode(f.read()).decode()
print(json.dumps({
    "ImageId": ami,
    "InstanceType": "t3.small",
    "UserData": encoded,
    # The user-data holds the grant, a bearer token: only the instance itself may read it.
    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
}))
PY
aws ec2 create-launch-template --launch-template-name "$name" \
    --launch-template-data "file://$work/template.json" \
    --query 'LaunchTemplate.LaunchTemplateId' --output text
aws autoscaling create-auto-scaling-group --auto-scaling-group-name "$name" \
    --launch-template "LaunchTemplateName=$name,Version=\$Latest" \
    --min-size 0 --max-size 10 --desired-capacity 2 --vpc-zone-identifier "$subnets"
echo "launch template and autoscaling group $name created"
