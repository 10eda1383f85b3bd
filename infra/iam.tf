# IAM roles for Kubernetes service accounts (IRSA). Each role trusts exactly one service
# account of the pipeline's namespace through the cluster's OIDC provider, and reaches only
# the bucket prefixes its pods use. The role ARNs go into the ServiceAccount annotations
# eks.amazonaws.com/role-arn of k8s/overlays/<environment> (output irsa_role_arns).
locals {
  oidc_issuer = element(split("oidc-provider/", var.cluster_oidc_provider_arn), 1)

  # role name suffix = Kubernetes service account name (k8s/base)
  irsa_policies = {
    mlflow           = data.aws_iam_policy_document.mlflow.json
    ray              = data.aws_iam_policy_document.ray.json
    prefect-flow-run = data.aws_iam_policy_document.prefect_flow_run.json
    serve            = data.aws_iam_policy_document.serve.json
  }

  data_bucket      = module.bucket["data"].arn
  artifacts_bucket = module.bucket["artifacts"].arn
  inference_bucket = module.bucket["inference-log"].arn
}

data "aws_iam_policy_document" "irsa_trust" {
  for_each = local.irsa_policies

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.cluster_oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.key}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa_policies

  name                 = "${local.name_prefix}-${each.key}"
  description          = "IRSA: ${var.namespace}/${each.key}"
  assume_role_policy   = data.aws_iam_policy_document.irsa_trust[each.key].json
  max_session_duration = 3600
}

resource "aws_iam_role_policy" "irsa" {
  for_each = local.irsa_policies

  name   = "s3-prefixes"
  role   = aws_iam_role.irsa[each.key].id
  policy = each.value
}

# MLflow server: proxies artifact reads and writes (--serve-artifacts) under mlflow/.
data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [local.artifacts_bucket]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["mlflow/*"]
    }
  }

  statement {
    sid       = "ReadWriteArtifacts"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.artifacts_bucket}/mlflow/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.s3.arn]
  }
}

# Ray head and workers: Ray Train checkpoints under ray/ (train.storage_path).
data "aws_iam_policy_document" "ray" {
  statement {
    sid       = "ListCheckpoints"
    actions   = ["s3:ListBucket"]
    resources = [local.artifacts_bucket]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["ray/*"]
    }
  }

  statement {
    sid       = "ReadWriteCheckpoints"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.artifacts_bucket}/ray/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.s3.arn]
  }
}

# Flow-run pods: DVC push/pull (dvc/), raw images to ingest (raw/, read only), the best
# checkpoint Ray wrote (ray/, read only), what the monitor judges (read only): inference
# batches (batches/) or the model service's prediction log (serving-log/).
data "aws_iam_policy_document" "prefect_flow_run" {
  statement {
    sid       = "ListData"
    actions   = ["s3:ListBucket"]
    resources = [local.data_bucket]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["dvc/*", "raw/*"]
    }
  }

  statement {
    sid       = "ReadWriteDvcRemote"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.data_bucket}/dvc/*"]
  }

  statement {
    sid       = "ReadRawImages"
    actions   = ["s3:GetObject"]
    resources = ["${local.data_bucket}/raw/*"]
  }

  statement {
    sid       = "ListCheckpointsAndBatches"
    actions   = ["s3:ListBucket"]
    resources = [local.artifacts_bucket, local.inference_bucket]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["ray/*", "batches/*", "serving-log/*"]
    }
  }

  statement {
    sid     = "ReadCheckpointsAndBatches"
    actions = ["s3:GetObject"]
    resources = [
      "${local.artifacts_bucket}/ray/*",
      "${local.inference_bucket}/batches/*",
      "${local.inference_bucket}/serving-log/*",
    ]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.s3.arn]
  }
}

# Model service (k8s/base/serving): writes its prediction log under serving-log/ (params
# serve.log) and nothing else. It only PUTs (records and images, each object whole); the
# monitor reads the log with the flow-run role. Models come through the MLflow server.
data "aws_iam_policy_document" "serve" {
  statement {
    sid       = "WriteServingLog"
    actions   = ["s3:PutObject"]
    resources = ["${local.inference_bucket}/serving-log/*"]
  }

  # A single-part PUT of an SSE-KMS object needs a data key only (a multipart upload would
  # need kms:Decrypt too; the writer's put_object never does one).
  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:GenerateDataKey"]
    resources = [aws_kms_key.s3.arn]
  }
}
