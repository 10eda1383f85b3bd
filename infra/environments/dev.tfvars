# Example values for the dev account: terraform plan -var-file=environments/dev.tfvars
environment               = "dev"
region                    = "eu-west-1"
cluster_name              = "mlops-dev"
cluster_oidc_provider_arn = "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
gpu_subnet_ids            = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
gpu_instance_types        = ["g5.xlarge", "g6.xlarge"]
gpu_capacity_type         = "SPOT"
gpu_max_nodes             = 1

noncurrent_version_retention_days = 7
