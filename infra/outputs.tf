output "bucket_names" {
  description = "Bucket per role: data, artifacts, inference-log."
  value       = { for key, bucket in module.bucket : key => bucket.name }
}

output "dvc_remote_url" {
  description = "dvc remote add -d storage <this>"
  value       = "s3://${module.bucket["data"].name}/dvc"
}

output "mlflow_artifacts_destination" {
  description = "mlflow server --artifacts-destination (k8s mlflow-config: artifacts-destination)."
  value       = "s3://${module.bucket["artifacts"].name}/mlflow"
}

output "ray_storage_path" {
  description = "params.yaml train.storage_path at scale."
  value       = "s3://${module.bucket["artifacts"].name}/ray"
}

output "inference_log_prefix" {
  description = "params.yaml monitor.current at scale."
  value       = "s3://${module.bucket["inference-log"].name}/batches"
}

output "serving_log_prefix" {
  description = "params.yaml serve.log at scale (and monitor.current, to judge what was served)."
  value       = "s3://${module.bucket["inference-log"].name}/serving-log"
}

output "irsa_role_arns" {
  description = "ServiceAccount name => IAM role ARN, for eks.amazonaws.com/role-arn."
  value       = { for name, role in aws_iam_role.irsa : name => role.arn }
}

output "kms_key_arn" {
  description = "The buckets' encryption key."
  value       = aws_kms_key.s3.arn
}

output "gpu_node_group" {
  description = "Name of the GPU managed node group."
  value       = aws_eks_node_group.gpu.node_group_name
}
