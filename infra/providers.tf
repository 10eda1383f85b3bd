provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project     = "mlops-pipeline"
      environment = var.environment
      managed-by  = "terraform"
    }
  }
}

data "aws_partition" "current" {}
