variable "name" {
  description = "Globally unique bucket name."
  type        = string
}

variable "purpose" {
  description = "What the bucket holds (a tag)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for default encryption (SSE-KMS with an S3 bucket key)."
  type        = string
}

variable "noncurrent_version_retention_days" {
  description = "Days a noncurrent object version is kept."
  type        = number
}
