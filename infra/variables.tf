variable "environment" {
  description = "dev or prod: names every resource (mlops-<environment>-...)."
  type        = string

  validation {
    condition     = contains(["dev", "prod"], var.environment)
    error_message = "environment must be dev or prod."
  }
}

variable "region" {
  description = "AWS region of the buckets and the EKS cluster."
  type        = string
}

variable "cluster_name" {
  description = "Name of the existing EKS cluster the GPU node group joins."
  type        = string
}

variable "cluster_oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (IRSA), arn:aws:iam::<account>:oidc-provider/oidc.eks.<region>.amazonaws.com/id/<id>."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:oidc-provider/.+$", var.cluster_oidc_provider_arn))
    error_message = "cluster_oidc_provider_arn must be an IAM OIDC provider ARN."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the pipeline (k8s/overlays/*: namespace)."
  type        = string
  default     = "mlops"
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept before it expires."
  type        = number
  default     = 30
}

variable "gpu_subnet_ids" {
  description = "Private subnets of the cluster where GPU nodes may start."
  type        = list(string)
}

variable "gpu_instance_types" {
  description = "GPU instance types for the Ray GPU workers, one NVIDIA GPU each (g5: A10G, g6: L4)."
  type        = list(string)
  default     = ["g5.2xlarge", "g6.2xlarge"]

  validation {
    condition     = alltrue([for t in var.gpu_instance_types : can(regex("^g[56]e?\\.", t))])
    error_message = "gpu_instance_types must be g5 or g6 instance types."
  }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT (Ray Train resumes from its last checkpoint after a reclaim)."
  type        = string
  default     = "ON_DEMAND"
}

variable "gpu_max_nodes" {
  description = "Most GPU nodes the group scales to; it idles at zero."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_max_nodes >= 1
    error_message = "gpu_max_nodes must be at least 1."
  }
}

variable "gpu_disk_size_gb" {
  description = "Root volume of a GPU node: CUDA images are large."
  type        = number
  default     = 200
}
