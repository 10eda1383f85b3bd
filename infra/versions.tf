terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # State in S3 with native locking; bucket and key per environment at init:
  #   terraform init -backend-config=environments/dev.s3.tfbackend
  backend "s3" {}
}
