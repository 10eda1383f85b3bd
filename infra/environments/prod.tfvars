# Example values for the prod account: terraform plan -var-file=environments/prod.tfvars
environment               = "prod"
region                    = "eu-west-1"
cluster_name              = "mlops-prod"
cluster_oidc_provider_arn = "arn:aws:iam::444455556666:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0D7F3A5C2B9E814D6A0EXAMPLE"
gpu_subnet_ids            = ["subnet-0fedcba9876543210", "subnet-0fedcba9876543211", "subnet-0fedcba9876543212"]
gpu_instance_types        = ["g5.4xlarge", "g6.4xlarge"]
gpu_capacity_type         = "ON_DEMAND"
gpu_max_nodes             = 8

noncurrent_version_retention_days = 90
