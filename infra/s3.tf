# Three buckets, each versioned, KMS-encrypted, private and reachable over TLS only
# (modules/s3_bucket). Prefixes inside them are what the IAM roles (iam.tf) grant.
locals {
  name_prefix = "mlops-${var.environment}"

  buckets = {
    # dvc/: the DVC remote; raw/: image folders that params ingest.source may name.
    data = "DVC remote and raw images"
    # mlflow/: MLflow artifacts (--artifacts-destination); ray/: Ray Train checkpoints
    # (params train.storage_path).
    artifacts = "MLflow artifacts and Ray checkpoints"
    # batches/: inference inputs the drift monitor judges (params monitor.current);
    # serving-log/: the model service's prediction log (params serve.log), which the
    # monitor may judge instead.
    inference-log = "Inference log"
  }
}

resource "aws_kms_key" "s3" {
  description             = "${local.name_prefix}: S3 buckets of the MLOps pipeline"
  enable_key_rotation     = true
  deletion_window_in_days = 30
}

resource "aws_kms_alias" "s3" {
  name          = "alias/${local.name_prefix}-s3"
  target_key_id = aws_kms_key.s3.key_id
}

module "bucket" {
  source   = "./modules/s3_bucket"
  for_each = local.buckets

  name                              = "${local.name_prefix}-${each.key}"
  purpose                           = each.value
  kms_key_arn                       = aws_kms_key.s3.arn
  noncurrent_version_retention_days = var.noncurrent_version_retention_days
}
