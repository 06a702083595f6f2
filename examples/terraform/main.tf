# A launch template and an autoscaling group whose instances all boot from one s3-postbox
# user-data. The user-data is rendered outside Terraform, by the issuer, from a grant that renews
# itself:
#
#   postbox-issuer renew --bucket results-bucket --prefix fleet/ --expires 6h \
#       --publish s3://ops-bucket/postbox/fleet.json -o grant.json
#   postbox-issuer user-data --grant grant.json --gzip -o user-data.gz
#
# so the operator's AWS credentials (which sign the grant) never enter Terraform or its state.
# The grant does: it is in the user-data, a bearer token. Keep the state as private as the
# template, and let renewal bound the exposure (README, "Fleets").

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

variable "name" {
  type        = string
  description = "Name of the launch template and the autoscaling group"
}

variable "user_data_file" {
  type        = string
  description = "The gzipped user-data postbox-issuer wrote (user-data --gzip -o FILE)"
}

variable "ami_id" {
  type = string
}

variable "subnet_ids" {
  type = list(string)
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "max_size" {
  type    = number
  default = 10
}

variable "desired_capacity" {
  type    = number
  default = 2
}

resource "aws_launch_template" "postbox" {
  name          = var.name
  image_id      = var.ami_id
  instance_type = var.instance_type
  user_data     = filebase64(var.user_data_file)

  # The user-data holds the grant: only the instance itself may read it, over IMDSv2.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

resource "aws_autoscaling_group" "postbox" {
  name                = var.name
  min_size            = 0
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  vpc_zone_identifier = var.subnet_ids

  launch_template {
    id      = aws_launch_template.postbox.id
    version = aws_launch_template.postbox.latest_version
  }
}

output "launch_template_id" {
  value = aws_launch_template.postbox.id
}
